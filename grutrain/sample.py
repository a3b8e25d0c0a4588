"""Text generation from a language model: temperature and top-k sampling."""

from __future__ import annotations

import torch

from grutrain.data.text import Vocabulary, detokenize, tokenize
from grutrain.errors import GrutrainError


MAX_LENGTH = 1_000_000
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3


def check_sampling(prompt: str, length: int, temperature: float, top_k: int | None, seed: int | None) -> None:
    """Refuse settings that would divide the logits into inf, overflow the generator or never end."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise GrutrainError("--prompt holds bytes that are not UTF-8; give the prompt as UTF-8 text") from None
    if not 0 <= length <= MAX_LENGTH:
        raise GrutrainError(f"--length {length} is out of range; give 0 to {MAX_LENGTH} tokens")
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise GrutrainError(f"--temperature {temperature:g} is out of range; give 0 (the most likely token) or "
                            f"{MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}")
    if top_k is not None and top_k < 1:
        raise GrutrainError(f"--top-k {top_k} must be 1 or more")
    if seed is not None and not 0 <= seed < 2**64:
        raise GrutrainError(f"--seed must be an integer from 0 to 2**64-1 (got {str(seed)[:30]})")


@torch.no_grad()
def generate(model, vocab: Vocabulary, prompt: str, length: int, *, tokenizer: str = "char",
             lowercase: bool = False, temperature: float = 1.0, top_k: int | None = None,
             seed: int | None = None, device: torch.device = torch.device("cpu")) -> str:
    """The prompt followed by `length` generated tokens; the same seed gives the same text."""
    generator = torch.Generator(device="cpu")
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    was_training = model.training
    model.eval()
    prompt_tokens = tokenize(prompt, tokenizer, lowercase)
    ids = vocab.encode(prompt_tokens) if prompt_tokens else torch.tensor([0])
    logits, hidden = model(ids[None].to(device))  # warm the state up on the whole prompt
    generated: list[int] = []
    for _ in range(length):
        last = logits[0, -1].float().cpu()  # [V]
        last[0] = float("-inf")  # never emit <unk>: it stands for text the model could not learn
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
    return detokenize(prompt_tokens + vocab.decode(generated), tokenizer)
