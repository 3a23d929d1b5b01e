"""The trainers the recipes run and the losses they add: the regularisers (`regularized`), the anchor (`anchor`), SFT
replay (`replay`) and the forgetting budget (`forgetting`).

May import: `goft.evaluation` (the measures), `goft.data`, `goft.io`, `goft.regularizers`, trl.
"""
