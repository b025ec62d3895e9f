"""Tiny transformers text-to-speech models with random weights, saved as a user would download them.

The tiny VITS model is built so that its lengths are exact: a deterministic duration predictor that gives every token
`TOKEN_DURATION` frames, and no noise. Its audio is random but its length is `tokens x ceil(TOKEN_DURATION / speed)`
frames of `SAMPLES_PER_FRAME` samples (the duration is no whole number, so float rounding cannot move the ceiling).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

TINY_VITS_SAMPLE_RATE = 22050
TOKEN_DURATION = 5.4
UPSAMPLE_RATES = (4, 4)
SAMPLES_PER_FRAME = math.prod(UPSAMPLE_RATES)
# the tokenizer keeps lowercase letters, space and apostrophe; it drops anything else (punctuation, digits)
ALPHABET = "abcdefghijklmnopqrstuvwxyz '"


def vits_token_count(text: str) -> int:
    """Tokens the tiny VITS tokenizer makes of one sentence: its kept characters with a pad between and around."""
    kept = "".join(char for char in text.lower() if char in ALPHABET).strip()
    return 2 * len(kept) + 1


def vits_samples(text: str, speed: float = 1.0) -> int:
    """Samples the tiny VITS model makes for one sentence."""
    frames_per_token = math.ceil(TOKEN_DURATION / speed)
    return vits_token_count(text) * frames_per_token * SAMPLES_PER_FRAME


def build_tiny_vits(folder: Path, *, num_speakers: int = 1, seed: int = 0) -> Path:
    """A VITS model of a few thousand parameters with its VitsTokenizer, saved into `folder` (config.json,
    model.safetensors, vocab.json, tokenizer_config.json)."""
    import torch
    from transformers import VitsConfig, VitsTokenizer
    from transformers.models.vits.modeling_vits import VitsModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "<unk>": 1} | {char: index + 2 for index, char in enumerate(ALPHABET)}
    vocab_path = folder / "vocab.json"
    vocab_path.write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = VitsTokenizer(vocab_file=str(vocab_path), phonemize=False, normalize=True, add_blank=True)

    config = VitsConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=16,
        flow_size=16,
        spectrogram_bins=9,
        upsample_initial_channel=16,
        upsample_rates=list(UPSAMPLE_RATES),
        upsample_kernel_sizes=[8, 8],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1]],
        duration_predictor_filter_channels=16,
        depth_separable_num_layers=1,
        duration_predictor_num_flows=1,
        prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1,
        posterior_encoder_num_wavenet_layers=1,
        use_stochastic_duration_prediction=False,
        noise_scale=0.0,
        noise_scale_duration=0.0,
        num_speakers=num_speakers,
        speaker_embedding_size=8 if num_speakers > 1 else 0,
        sampling_rate=TINY_VITS_SAMPLE_RATE,
    )
    torch.manual_seed(seed)
    model = VitsModel(config)
    projection = model.get_submodule("duration_predictor.proj")
    assert isinstance(projection, torch.nn.Conv1d)
    assert projection.bias is not None
    with torch.no_grad():
        # every token lasts TOKEN_DURATION frames: the log-duration is the projection's constant bias
        projection.weight.zero_()
        projection.bias.fill_(math.log(TOKEN_DURATION))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
