"""Text generation from a language model: temperature and top-k sampling."""

from __future__ import annotations

import torch

from grutrain.data.text import detokenize, long_tensor, tokenize


@torch.no_grad()
def generate(model, tokenizer, prompt: str, length: int, *, lowercase: bool = False, temperature: float = 1.0, top_k: int | None = None,
             seed: int | None = None, device: torch.device = torch.device("cpu")) -> str:
    """The prompt followed by `length` generated tokens; the same seed gives the same text."""
    generator = torch.Generator(device="cpu")
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    was_training = model.training
    model.eval()
    # tokenizer: one of data/tokenizers.py's (char, word, bytes, bpe)
    prompt = prompt.lower() if lowercase else prompt
    ids = long_tensor(tokenizer.encode(prompt)) if prompt else torch.tensor([], dtype=torch.long)
    ids = ids if len(ids) else torch.tensor([0])
    logits, hidden = model(ids[None].to(device))  # warm the state up on the whole prompt
    generated: list[int] = []
    for _ in range(length):
        last = logits[0, -1].float().cpu()  # [V]
        if tokenizer.unk_id is not None:
            last[tokenizer.unk_id] = float("-inf")  # never emit <unk>: it stands for text the model could not learn
        if temperature <= 0:
            next_id = int(last.argmax())
        else:
            last = last / temperature
            if top_k is not None and top_k < len(last):
                kth = torch.topk(last, top_k).values[-1]
                last = last.masked_fill(last < kth, float("-inf"))
            next_id = int(torch.multinomial(torch.softmax(last, -1), 1, generator=generator))
        generated.append(next_id)
        logits, hidden = model(torch.tensor([[next_id]], device=device), hidden)
    model.train(was_training)
    if tokenizer.kind in ("char", "word"):  # the prompt as written, even its characters the vocabulary lacks
        return detokenize(tokenize(prompt, tokenizer.kind) + [tokenizer.tokens[i] for i in generated], tokenizer.kind)
    return prompt + tokenizer.decode(generated)
