"""Tiny Stable-Diffusion-shaped models built from configs, for the tests and the demo.

They have the SD1 (or SD2) architecture in every structural respect that our code depends on (block layout,
key names, attention placement, tokenizer behaviour) but with a handful of channels, so a whole pipeline runs
on a CPU in milliseconds. Real loading code is exercised by writing them to disk in the formats real models
use and reading them back. Their weights are random: what they draw is noise, not pictures.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TEXT_HIDDEN = 64  # one attention head of width 64, the head size SD's text encoders use
WORDS = ["a", "photo", "of", "sks", "red", "blue", "green", "girl", "cat", "dog", "the", "in", "style"]


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable-character table of OpenAI's CLIP BPE (what CLIPTokenizer expects in its vocab)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in chars], strict=True))


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges to a word's pieces as CLIP's tokenizer does: always the best-ranked pair first."""
    while len(pieces) > 1:
        candidates = [(ranks[pair], i) for i, pair in enumerate(itertools.pairwise(pieces)) if pair in ranks]
        if not candidates:
            break
        i = min(candidates)[1]
        pieces = [*pieces[:i], pieces[i] + pieces[i + 1], *pieces[i + 2 :]]
    return pieces


def write_tiny_tokenizer(folder: Path, words: Sequence[str] | None = None) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with a small vocabulary: all byte symbols, a few whole words (`words`, default WORDS),
    the two special tokens. Other words still tokenize, letter by letter."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    ranks: dict[tuple[str, str], int] = {}  # merge -> priority, in the order merges.txt lists them
    for word in WORDS if words is None else words:
        letters = [*word[:-1], word[-1] + "</w>"]
        pieces = letters
        # Merge the pieces left to right ("s k" -> "sk", "sk s</w>" -> "sks</w>"), then check what BPE makes of
        # the word: an earlier word's merge can split it otherwise ("r e" from "red" in "green"); chain those
        # pieces too. New merges rank after all existing ones, so earlier words keep their single token.
        while len(pieces) > 1:
            merged = pieces[0]
            for piece in pieces[1:]:
                ranks.setdefault((merged, piece), len(ranks))
                merged += piece
                if merged not in vocab_list:
                    vocab_list.append(merged)
            pieces = _bpe(letters, ranks)
    merges = [f"{a} {b}" for a, b in ranks]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]  # last, so EOS has the highest id as in real CLIP
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab_list)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=77,  # without it pipelines pad to 1e30
        pad_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_text_encoder(tokenizer: CLIPTokenizer, layers: int = 2, hidden_act: str = "quick_gelu") -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=TEXT_HIDDEN * 4,
        num_hidden_layers=layers,
        num_attention_heads=TEXT_HIDDEN // 64,
        max_position_embeddings=77,
        hidden_act=hidden_act,  # OpenAI CLIP (SD1) uses quick-GELU, OpenCLIP (SD2) GELU
        projection_dim=TEXT_HIDDEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def tiny_unet(sd2: bool = False) -> UNet2DConditionModel:
    """Two levels like SD's first and last: cross-attention down block, plain down block, and the mirror going up."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128) if sd2 else (32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        # SD1 names its head *count* attention_head_dim (8); SD2 has 64-wide heads and linear projections.
        attention_head_dim=(1, 2) if sd2 else 8,
        use_linear_projection=sd2,
        norm_num_groups=32,
    )


def tiny_vae() -> AutoencoderKL:
    """Four levels, so latents are 1/8 of the image side as in SD."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )


def tiny_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def tiny_pipeline(
    tokenizer_dir: Path, seed: int = 0, sd2: bool = False, words: Sequence[str] | None = None
) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    tokenizer = write_tiny_tokenizer(tokenizer_dir, words)
    return StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(tokenizer, hidden_act="gelu" if sd2 else "quick_gelu"),
        tokenizer=tokenizer,
        unet=tiny_unet(sd2=sd2),
        scheduler=tiny_scheduler("v_prediction" if sd2 else "epsilon"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_tiny_diffusers_model(
    folder: Path, seed: int = 0, sd2: bool = False, words: Sequence[str] | None = None
) -> Path:
    """A complete diffusers-format model folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, ...).
    The same seed and words give the same weights; the caller's global torch RNG is left as it was."""
    with tempfile.TemporaryDirectory() as tokenizer_src, torch.random.fork_rng(devices=[]):
        pipe = tiny_pipeline(Path(tokenizer_src), seed=seed, sd2=sd2, words=words)
        pipe.save_pretrained(folder, safe_serialization=True)
    return folder


SDXL_TIME_EMBED_DIM = 8  # per number of the six size/crop/target-size ids


def tiny_sdxl_unet() -> UNet2DConditionModel:
    """SDXL's shape in small: no attention at the first level, linear projections, a deeper transformer lower down,
    cross-attention over both text encoders' states, and the pooled text + time ids as the added embedding."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=TEXT_HIDDEN * 2,
        attention_head_dim=(1, 2),  # head counts: 64-channel heads, as SDXL's
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=SDXL_TIME_EMBED_DIM * 6 + TEXT_HIDDEN,
        norm_num_groups=32,
    )


def write_tiny_sdxl_diffusers_model(folder: Path, seed: int = 0, words: Sequence[str] | None = None) -> Path:
    """A complete diffusers SDXL folder (StableDiffusionXLPipeline: unet, vae, text_encoder, text_encoder_2, both
    tokenizers, scheduler) with random weights."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    with tempfile.TemporaryDirectory() as tokenizer_src, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = write_tiny_tokenizer(Path(tokenizer_src), words)
        second = tiny_text_encoder(tokenizer, hidden_act="gelu").config  # OpenCLIP's activation, with a projection
        vae = tiny_vae()
        vae.register_to_config(scaling_factor=0.13025)  # SDXL's VAE scale
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=tiny_text_encoder(tokenizer),
            text_encoder_2=CLIPTextModelWithProjection(second),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=tiny_sdxl_unet(),
            scheduler=tiny_scheduler(),
        )
        pipe.save_pretrained(folder, safe_serialization=True)
    return folder
