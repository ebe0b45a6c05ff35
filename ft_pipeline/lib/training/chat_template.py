"""The ChatML chat template used to train *and* to serve the locally fine-tuned models.

Rendering, per message::

    <|im_start|>{role}\\n{content}<|im_end|>\\n

Each assistant turn's content **and its closing ``<|im_end|>``** sit inside
``{% generation %}...{% endgeneration %}``. transformers turns those markers into the
``assistant_masks`` of ``apply_chat_template(..., return_assistant_tokens_mask=True)``, which
TRL's ``assistant_only_loss`` uses as the loss mask. Putting ``<|im_end|>`` inside the markers is
what teaches the model to stop: a template that leaves it outside still trains with a healthy
looking loss but yields a model that never ends its turn (TRL only warns about it). The newline
after ``<|im_end|>`` stays outside: generation stops at ``<|im_end|>``, so the model never emits it.

At inference the markers render nothing, so prompts are byte-identical to training sequences, and
``add_generation_prompt=True`` appends ``<|im_start|>assistant\\n`` -- exactly the prefix that
preceded every trained assistant turn.

A missing ``content`` renders as an empty string rather than the text "None", so a normalisation
slip cannot leak a literal "None" into training data.
"""

from __future__ import annotations

__all__ = [
    "CHATML_TRAINING_TEMPLATE",
    "IM_START",
    "IM_END",
    "SMOLLM2_CHAT_TEMPLATE",
    "SMOLLM2_TRAINING_TEMPLATE",
    "TRAINING_VARIANTS",
]

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

CHATML_TRAINING_TEMPLATE: str = """\
{%- for message in messages %}
    {%- set content = message['content'] if message['content'] is defined and message['content'] is not none else '' %}
    {%- if message['role'] == 'assistant' %}
        {{- '<|im_start|>assistant\\n' }}
        {%- generation %}
            {{- content + '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}"""


#: SmolLM2-Instruct's own template, exactly as its tokenizer ships it: ChatML, plus a default system
#: prompt when the conversation has none.
SMOLLM2_CHAT_TEMPLATE: str = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: The same rendering with ``{% generation %}`` markers around each assistant reply and its
#: ``<|im_end|>``: what SmolLM2 is fine-tuned and served with. It renders byte-identical text to
#: SMOLLM2_CHAT_TEMPLATE (the tests check it on the real tokenizer), so the fine-tuned model sees
#: at inference exactly the prompts it was trained on, default system prompt included.
SMOLLM2_TRAINING_TEMPLATE: str = CHATML_TRAINING_TEMPLATE.replace(
    "{%- for message in messages %}\n",
    "{%- for message in messages %}\n"
    "    {%- if loop.first and messages[0]['role'] != 'system' %}\n"
    "        {{- '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\\n' }}\n"
    "    {%- endif %}\n",
    1,
)

#: Known shipped templates -> their training variant (with generation markers, same rendering).
TRAINING_VARIANTS: dict[str, str] = {SMOLLM2_CHAT_TEMPLATE: SMOLLM2_TRAINING_TEMPLATE}
