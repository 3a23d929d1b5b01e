"""Recipe data: where it comes from (`arguments`, `loading`: local files and folders split as datasets splits them
(`layouts`), Hub ids), mixtures (alignment-handbook's `mixtures` and older `handbook_mixer`, TRL's `trl_datasets`),
the JSON files read record by record (`json_files`), the shape of each row checked per stage (`rows`: "check a DPO
row" lives there), the dataset types each stage reads and the one form they are normalised to (`dataset_types`,
`stages`) and chat templates with generation markers (`chat_templates`).

May import: `goft.errors`, `goft.io`, datasets, trl, huggingface_hub. Not `goft.training`, `goft.evaluation` or
`goft.comparison`: training and evaluation both read data through here.
"""
