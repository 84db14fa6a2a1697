#!/usr/bin/env python3
"""Random checkpoints of real models' shapes for the encode benchmark (never committed).

`--family llava_onevision` (default): shapes of llava-onevision-qwen2-0.5b-ov:

- vision tower: SigLIP-so400m-patch14-384 (hidden 1152, intermediate 4304, 26 layers,
  16 heads, patch 14 -> 27x27 = 729 patches), `vision_feature_layer` -1, select
  strategy `full`; projector 1152 -> 896 -> 896 (GELU);
- decoder: Qwen2-0.5B (hidden 896, intermediate 4864, 24 layers, 14 heads, 2 KV heads,
  rope_theta 1e6, tied embeddings), vocab 151936 unless `--vocab` says otherwise.

The 27x27 grid pools to 14x14 = 196 tokens per frame. Weights are random (normal, std
0.02; norms 1, biases 0) and saved in bf16 by `save_pretrained`, so the layout is the one
`transformers` 5 writes. Text needs no real vocabulary here (the encode path runs no text
tokens), so the tokenizer, chat template and processor config are the tiny test
fixture's (`tests/fixtures/llava_ov/tiny_a`), with the processor's sizes set to the image
size and the image/video token ids kept at the tiny tokenizer's `<image>`/`<video>` ids.

Image size: 384 as the real checkpoint says; patch 14 does not divide it, so the
stride-14 patch conv drops the last 6 pixel rows and columns (27x27 patches), as in
`transformers`.

`--family smolvlm`: shapes of SmolVLM2-256M-Video-Instruct: vision tower hidden 768,
intermediate 3072, 12 layers, 12 heads, 512 px in patches of 16 (32x32 = 1024 patches),
pixel-shuffle scale 4 (64 tokens a frame, connector 12288 -> 576 without bias);
decoder SmolLM2-135M (hidden 576, intermediate 1536, 30 layers, 9 heads, 3 KV heads,
rope_theta 1e5, vocab 49280, an untied LM head). The processor config is written as the
hub checkpoint lays it out (`preprocessor_config.json` with `size` longest edge 2048,
`max_image_size` 512 and `video_sampling`), so video frames are resized to a longest
edge of 2048 and then to 512x512, as `SmolVLMVideoProcessor` does with it. The
tokenizer is the tiny SmolVLM fixture's (`tests/fixtures/smolvlm/tiny_s`): the encode
path needs only the frame chunk's few text tokens, whose ids are rows of the real
vocabulary.

`--family qwen2_5_vl`: shapes of Qwen2.5-VL-3B-Instruct: vision transformer depth 32,
hidden 1280, intermediate 3420 (SwiGLU), 16 heads, patch 14 over temporal patches of 2
frames, windows of 112 px with full attention in blocks 7, 15, 23 and 31, a 2x2 merger
into 2048; decoder Qwen2.5-3B (hidden 2048, intermediate 11008, 36 layers, 16 heads,
2 KV heads, rope_theta 1e6, M-RoPE sections [16, 24, 24], tied embeddings). The config
is written in the hub's flat layout and the processor as the hub's
`preprocessor_config.json` (min 3136, max 12845056 pixels). The tokenizer and chat
template are the tiny Qwen2.5-VL fixture's (`tests/fixtures/qwen2_5_vl/tiny_q`) and the
vocabulary its 84 ids (the real 151936 only adds an embedding table the encode path
does not touch beyond its rows); 3.4B parameters, 6.9 GB in bf16.

Usage (reference environment, see scripts/setup-python.sh):

    python scripts/make_bench_checkpoint.py [--out target/bench-checkpoints/llava_ov_0p5b_shape]

Idempotent: an existing complete checkpoint (marked by `.complete`) is left alone
unless `--force`. Takes about a minute and 1.8 GB of disk.
"""

import argparse
import json
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "fixtures", "llava_ov", "tiny_a")
DEFAULT_OUT = os.path.join(REPO, "target", "bench-checkpoints", "llava_ov_0p5b_shape")
SMOL_OUT = os.path.join(REPO, "target", "bench-checkpoints", "smolvlm2_256m_shape")
QWEN_OUT = os.path.join(REPO, "target", "bench-checkpoints", "qwen2_5_vl_3b_shape")
TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

VISION = dict(
    model_type="siglip_vision_model",
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=26,
    num_attention_heads=16,
    num_channels=3,
    image_size=384,
    patch_size=14,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    vision_use_head=False,
)
TEXT = dict(
    model_type="qwen2",
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    tie_word_embeddings=True,
    use_sliding_window=False,
)


def randomise(model, seed):
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # layer_norm1/2, post_layernorm, input_layernorm, norm..., Qwen's merger ln_q
            is_norm = "norm" in name or ".ln_q." in name
            if name.endswith(".bias"):
                p.zero_()
            elif is_norm:
                p.fill_(1.0)
            else:
                # Sampled in fp32 chunks then cast: bf16 normal_ with a generator is slow.
                flat = p.view(-1)
                step = 1 << 24
                for start in range(0, flat.numel(), step):
                    n = min(step, flat.numel() - start)
                    flat[start : start + n].copy_(torch.randn(n, generator=gen) * 0.02)


def build(out, vocab_size, image_size, seed):
    import torch
    import transformers
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    transformers.utils.logging.disable_progress_bar()
    with open(os.path.join(TINY, "config.json")) as f:
        tiny = json.load(f)
    vision = dict(VISION, image_size=image_size)
    text = dict(TEXT, vocab_size=vocab_size)
    text["eos_token_id"] = tiny["text_config"]["eos_token_id"]
    text["pad_token_id"] = tiny["text_config"]["pad_token_id"]
    text["bos_token_id"] = None
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tiny["image_token_index"],
        video_token_index=tiny["video_token_index"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=True,
    )
    # Built on the meta device and materialised in bf16: no fp32 copy, no slow init.
    with torch.device("meta"):
        model = LlavaOnevisionForConditionalGeneration(config)
    model = model.to(torch.bfloat16).to_empty(device="cpu").eval()
    model.tie_weights()
    randomise(model, seed)

    staging = out + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    for name in TEXT_FILES:
        shutil.copy(os.path.join(TINY, name), os.path.join(staging, name))
    with open(os.path.join(TINY, "processor_config.json")) as f:
        processor = json.load(f)
    size = image_size
    grid = size // VISION["patch_size"]
    for section in ("image_processor", "video_processor"):
        processor[section]["size"] = {"height": size, "width": size}
    processor["num_image_tokens"] = grid * grid
    with open(os.path.join(staging, "processor_config.json"), "w") as f:
        json.dump(processor, f, indent=2)
    params = sum(p.numel() for p in model.parameters())
    with open(os.path.join(staging, ".complete"), "w") as f:
        json.dump({"parameters": params, "vocab_size": vocab_size, "image_size": image_size, "seed": seed}, f)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    return params


SMOL_TINY = os.path.join(REPO, "tests", "fixtures", "smolvlm", "tiny_s")
SMOL_VISION = dict(
    model_type="smolvlm_vision",
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=512,
    patch_size=16,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
)
SMOL_TEXT = dict(
    model_type="llama",
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=False,
)


def build_smolvlm(out, vocab_size, seed):
    import torch
    import transformers
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    transformers.utils.logging.disable_progress_bar()
    with open(os.path.join(SMOL_TINY, "config.json")) as f:
        tiny = json.load(f)
    text = dict(SMOL_TEXT, vocab_size=vocab_size)
    text["eos_token_id"] = tiny["text_config"]["eos_token_id"]
    text["pad_token_id"] = tiny["text_config"]["pad_token_id"]
    text["bos_token_id"] = None
    config = SmolVLMConfig(
        vision_config=SMOL_VISION, text_config=text, image_token_id=tiny["image_token_id"],
        scale_factor=4, tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = SmolVLMForConditionalGeneration(config)
    model = model.to(torch.bfloat16).to_empty(device="cpu").eval()
    randomise(model, seed)

    staging = out + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(SMOL_TINY, name), os.path.join(staging, name))
    grid = SMOL_VISION["image_size"] // SMOL_VISION["patch_size"]
    hub = {
        "image_processor_type": "SmolVLMImageProcessor", "processor_class": "SmolVLMProcessor",
        "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True,
        "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "max_image_size": {"longest_edge": SMOL_VISION["image_size"]}, "resample": 1,
        "rescale_factor": 1 / 255, "size": {"longest_edge": 2048},
        "video_sampling": {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": SMOL_VISION["image_size"]}},
    }
    with open(os.path.join(staging, "preprocessor_config.json"), "w") as f:
        json.dump(hub, f, indent=2)
    with open(os.path.join(staging, "processor_config.json"), "w") as f:
        json.dump({"image_seq_len": grid * grid // 16, "processor_class": "SmolVLMProcessor"}, f, indent=2)
    params = sum(p.numel() for p in model.parameters())
    with open(os.path.join(staging, ".complete"), "w") as f:
        json.dump({"family": "smolvlm", "parameters": params, "vocab_size": vocab_size, "seed": seed}, f)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    return params


QWEN_TINY = os.path.join(REPO, "tests", "fixtures", "qwen2_5_vl", "tiny_q")
QWEN_VISION = dict(
    depth=32, hidden_act="silu", hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3,
    out_hidden_size=2048, patch_size=14, spatial_merge_size=2, spatial_patch_size=14, window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, temporal_patch_size=2,
)
QWEN_TEXT = dict(
    hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
    num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6, rope_theta=1000000.0,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, tie_word_embeddings=True,
    use_sliding_window=False, sliding_window=32768, max_window_layers=70, hidden_act="silu",
)


def build_qwen(out, vocab_size, seed):
    import torch
    import transformers
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    transformers.utils.logging.disable_progress_bar()
    with open(os.path.join(QWEN_TINY, "config.json")) as f:
        tiny = json.load(f)
    ids = {k: tiny[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    flat = dict(QWEN_TEXT, vocab_size=vocab_size, model_type="qwen2_5_vl",
                architectures=["Qwen2_5_VLForConditionalGeneration"], vision_config=QWEN_VISION,
                eos_token_id=tiny["text_config"]["eos_token_id"], bos_token_id=tiny["text_config"]["bos_token_id"],
                torch_dtype="bfloat16", **ids)
    config = Qwen2_5_VLConfig.from_dict(dict(flat))
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    model = model.to(torch.bfloat16).to_empty(device="cpu").eval()
    randomise(model, seed)
    model.tie_weights()

    staging = out + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    with open(os.path.join(staging, "config.json"), "w") as f:
        json.dump(flat, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(QWEN_TINY, name), os.path.join(staging, name))
    for name in ("processor_config.json", "video_preprocessor_config.json", "preprocessor_config.json"):
        path = os.path.join(staging, name)
        if os.path.exists(path):
            os.remove(path)
    hub = {
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
    }
    with open(os.path.join(staging, "preprocessor_config.json"), "w") as f:
        json.dump(hub, f, indent=2)
    params = sum(p.numel() for p in model.parameters())
    with open(os.path.join(staging, ".complete"), "w") as f:
        json.dump({"family": "qwen2_5_vl", "parameters": params, "vocab_size": vocab_size, "seed": seed}, f)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    return params


def reexec_in_pyref():
    """Runs under the reference environment's Python, as bench_encode.py does."""
    for env in (os.environ.get("VSTREAMD_PYREF"), "/opt/vstreamd/pyref", "/opt/pyref"):
        python = os.path.join(env or "", "bin", "python")
        if env and os.path.exists(python):
            if os.path.realpath(sys.prefix) != os.path.realpath(env):
                os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:]])
            return
    sys.exit("no reference Python environment: run scripts/setup-python.sh")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="llava_onevision", choices=["llava_onevision", "smolvlm", "qwen2_5_vl"])
    ap.add_argument("--out", default=None,
                    help=f"default: {DEFAULT_OUT} (llava_onevision), {SMOL_OUT} (smolvlm), {QWEN_OUT} (qwen2_5_vl)")
    ap.add_argument("--vocab", type=int, default=None, help="decoder vocabulary size (default: the real model's)")
    ap.add_argument("--image-size", type=int, default=VISION["image_size"], help="tower input size (see above)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even if present")
    args = ap.parse_args()
    reexec_in_pyref()
    smol = args.family == "smolvlm"
    qwen = args.family == "qwen2_5_vl"
    out = os.path.abspath(args.out or (SMOL_OUT if smol else QWEN_OUT if qwen else DEFAULT_OUT))
    vocab = args.vocab or (49280 if smol else 84 if qwen else 151936)
    if not args.force and os.path.exists(os.path.join(out, ".complete")):
        with open(os.path.join(out, ".complete")) as f:
            done = json.load(f)
        wanted = {"vocab_size": vocab, "seed": args.seed}
        wanted.update({"family": args.family} if smol or qwen else {"image_size": args.image_size})
        if all(done.get(k) == v for k, v in wanted.items()):
            print(f"[make_bench_checkpoint] present: {out}", file=sys.stderr)
            return
    os.makedirs(os.path.dirname(out), exist_ok=True)
    start = time.perf_counter()
    if smol:
        params = build_smolvlm(out, vocab, args.seed)
    elif qwen:
        params = build_qwen(out, vocab, args.seed)
    else:
        params = build(out, vocab, args.image_size, args.seed)
    print(
        f"[make_bench_checkpoint] wrote {out}: {params / 1e6:.0f}M parameters (bf16), "
        f"vocab {vocab}, {args.family}, {time.perf_counter() - start:.0f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
