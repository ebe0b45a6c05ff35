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

__all__ = ["CHATML_TRAINING_TEMPLATE", "IM_START", "IM_END"]

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
