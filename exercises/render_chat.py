"""Exercise: the chat template and its loss mask, from a list of messages.

messages: [{"role": "system" | "user" | "assistant", "content": str}, ...]. Render
  <|bos|>, then for each message: its role marker, its content, <|end|>
with tokenizer.bos_id, tokenizer.role_ids[role] and tokenizer.end_id, each content encoded WITH ONE
LEADING SPACE: data.encode_content(tokenizer, text), which is tokenizer.encode(" " + text).
loss_mask has one entry per token: 1 on an assistant message's content and on the <|end|> that closes
it (the model must learn to stop), 0 on everything else: <|bos|>, the role markers, system and user text.
With mask_prompt=False (the no-masking baseline) every token after <|bos|> is 1.
Return (ids, loss_mask), two lists of ints of the same length.
The checker's tokenizer gives each character its code point: " hi" -> [32, 104, 105].
Check it: python -m exercises render_chat      Solution: data.render_chat
"""
from data import encode_content


def render_chat(tokenizer, messages, mask_prompt=True):
    raise NotImplementedError("exercise: write render_chat")
