"""Chat templates with `{% generation %}` markers, which assistant-only loss needs, for models that lack them.

Each training template renders exactly like the model's own template; the markers only tell the tokenizer which
tokens the assistant wrote.
"""

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>'"
    " + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2_TRAINING_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TRAINING_TEMPLATES = {SMOLLM2_TEMPLATE: SMOLLM2_TRAINING_TEMPLATE}


def use_training_chat_template(tokenizer) -> bool:
    """Swap in the marked-up twin of the tokenizer's chat template if goft knows one; True if it did."""
    training = TRAINING_TEMPLATES.get(tokenizer.chat_template)
    if training is None:
        return False
    tokenizer.chat_template = training
    return True
