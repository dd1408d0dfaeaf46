"""The chat template loraq trains with when a base model has none: one copy for worker and estimate."""

from __future__ import annotations

# ChatML, with tool calls written out as JSON (Qwen's way) so that they are trained on too.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% for call in message.tool_calls or [] %}"
    "{{ '\n<tool_call>\n' + call | tojson + '\n</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
