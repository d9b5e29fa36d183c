"""The trap world's language models: a byte-level BPE tokenizer and small GPT-2 models, trained here.

Plain ``transformers``/``tokenizers`` parts saved in the standard layout, so every ``eraselab traps`` verb loads
them like any causal LM (``AutoModelForCausalLM.from_pretrained(path)``). Training is next-token prediction on
the documents packed into fixed-length blocks separated by the end-of-text token (as GPT-2 was trained), with
AdamW, linear warm-up and cosine decay; block order and initialisation follow the seed.

>>> tokenizer = train_tokenizer(["In spring the miller sold salt."] * 20, vocab_size=300)
>>> tokenizer.decode(tokenizer("the miller").input_ids)
'the miller'
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from eraselab.errors import EraselabError

END_OF_TEXT = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE tokenizer learned from ``texts``."""
    if not any(text.strip() for text in texts):
        raise EraselabError("the corpus is empty: give at least one document with text")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT,
                                   pad_token=END_OF_TEXT, unk_token=END_OF_TEXT)


@dataclass(frozen=True)
class LmRecipe:
    """Size and training of a trap-world model (defaults: about 1M parameters, minutes on a laptop CPU)."""

    layers: int = 4
    width: int = 128
    heads: int = 4
    block: int = 128
    epochs: int = 2
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 100
    seed: int = 0


def make_model(vocab_size: int, recipe: LmRecipe) -> GPT2LMHeadModel:
    torch.manual_seed(recipe.seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=max(256, recipe.block), n_embd=recipe.width,
                        n_layer=recipe.layers, n_head=recipe.heads, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def pack(texts: list[str], tokenizer: PreTrainedTokenizerFast, block: int) -> torch.Tensor:
    """Documents joined by end-of-text and cut into blocks: (N, block)."""
    stream: list[int] = []
    for ids in tokenizer(texts).input_ids:
        stream.extend([*ids, tokenizer.eos_token_id])
    usable = len(stream) // block * block
    if usable == 0:
        raise EraselabError(f"the corpus has {len(stream)} tokens, fewer than one block of {block}")
    return torch.tensor(stream[:usable]).view(-1, block)


def train_lm(texts: list[str], tokenizer: PreTrainedTokenizerFast, recipe: LmRecipe = LmRecipe(),
             progress: bool = True) -> GPT2LMHeadModel:
    """Train a fresh model on ``texts``; the same texts and recipe give the same weights."""
    blocks = pack(texts, tokenizer, recipe.block)
    model = make_model(len(tokenizer), recipe)
    steps = recipe.epochs * math.ceil(len(blocks) / recipe.batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / recipe.warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    order = random.Random(recipe.seed)
    model.train()
    bar = tqdm(total=steps, desc="train trap-world LM", disable=not progress)
    for _ in range(recipe.epochs):
        indices = list(range(len(blocks)))
        order.shuffle(indices)
        for start in range(0, len(indices), recipe.batch):
            batch = blocks[indices[start:start + recipe.batch]]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


def save_lm(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, out: Path) -> Path:
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def load_lm(source: str) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """A causal LM and its tokenizer from a local directory, or a hub id when online."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise EraselabError(f"cannot load a causal language model from {source!r}: give a local directory with config, "
                            f"weights and tokenizer, or a hub id when online ({type(error).__name__})") from None
    return model.eval(), tokenizer
