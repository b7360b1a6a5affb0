"""Evaluation throughput: the original's one-review-at-a-time generation against batched label scoring.

Both answer every review; the report gives reviews/s, the ratio and how often the two answers agree. A third row
times predict.py's path on a file of the same reviews (read the file, label scoring, write the JSONL answers); on
the CPU a fourth times it with the model in bf16, the precision `--dtype auto` falls back to when fp32 does not fit
(the ratio is `predict_bf16_vs_fp32`). The last line is `speedup_vs_original: <ratio>`.

Run from the repository root:  python bench/eval_throughput.py   (or python -m bench.eval_throughput)
"""

import argparse
import dataclasses
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import default_data, default_tokenizer, display_path, format_table, header_lines, split_jsonl
from tuning.data.prompt import PromptFormat
from tuning.eval.evaluate import EvalSettings, encode_eval_data, prompt_settings
from tuning.eval.flags import add_dtype_flag
from tuning.eval.generation import greedy_generate, parse_answer
from tuning.eval.inference import inference_setup, load_for_inference
from tuning.eval.predicting import Classifier, find_model, read_input_file, write_predictions
from tuning.eval.scoring import candidate_ids, label_log_probs
from tuning.model.baichuan import BaichuanForCausalLM, BaichuanTokenizer, tiny_config
from tuning.model.tiny import ASSISTANT_TOKEN, USER_TOKEN
from tuning.run_layout import run_defaults
from tuning.runtime.cli import HelpFormatter, whole_number
from tuning.runtime.devices import detect_device, timed
from tuning.runtime.errors import report_errors
from tuning.runtime.fileio import read_jsonl, write_jsonl

DEMO_RUN = run_defaults(demo=True).output_dir  # where the CPU demo (`make demo`) saves its tuned model


def benchmark(args: argparse.Namespace) -> list[str]:
    """Time both ways over the same reviews, round after round; return the report's lines."""
    model_dir = find_model(args.model, [DEMO_RUN])
    setup = inference_setup(args.dtype, [model_dir])
    device, dtype = setup.device, setup.dtype
    for line in header_lines(device, dtype):
        print(line, flush=True)
    # The prompts the model was trained with (its run_config.json), as run_test.py uses them.
    prompt, _, _ = prompt_settings({"model_max_length": args.model_max_length}, model_dir)
    args.model_max_length = prompt["model_max_length"]
    settings = EvalSettings(args.batch_size, args.max_new_tokens, args.reviews, **prompt)
    with tempfile.TemporaryDirectory(prefix="eval_throughput.") as workdir:
        eval_file = split_jsonl(args.data, "eval", Path(workdir))
        tokenizer, prompt_format, split = encode_eval_data(model_dir, eval_file, settings)
        review_file, answer_file = Path(workdir) / "reviews.jsonl", Path(workdir) / "answers.jsonl"
        write_jsonl(review_file, [{"review": record["review"]} for record in read_jsonl(eval_file)[: args.reviews]])
        label_words = prompt_format.label_words
        prompts = split.prompts()
        model = load_for_inference(model_dir, device, dtype)
        candidates = candidate_ids(prompt_format, tokenizer)
        pad_token_id, eos_token_id = model.config.pad_token_id, prompt_format.eos_token_id
        classifier = Classifier(model, tokenizer, prompt_format, args.model_max_length, args.batch_size)

        def generate(batch: list[list[int]]) -> list[list[int]]:
            return greedy_generate(model, batch, pad_token_id, eos_token_id, args.max_new_tokens, batch_size=1)

        def score(batch: list[list[int]]) -> torch.Tensor:
            return label_log_probs(model, batch, candidates, pad_token_id, args.batch_size)

        def predict_file(classifier: Classifier) -> list[str]:
            """predict.py --input reviews.jsonl --output answers.jsonl, the model already loaded."""
            predictions = classifier.classify(read_input_file(review_file).texts)
            write_predictions(predictions.records, answer_file, sys.stdout)
            return [record["label"] for record in predictions.records]

        methods = {"generation": partial(generate, prompts), "scoring": partial(score, prompts),
                   "predict": partial(predict_file, classifier)}
        if device.kind == "cpu" and dtype == torch.float32:
            bf16_model = load_for_inference(model_dir, device, torch.bfloat16)
            methods["predict-bf16"] = partial(predict_file, dataclasses.replace(classifier, model=bf16_model))
        generate(prompts[: args.batch_size])  # warm-up, untimed
        score(prompts[: args.batch_size])
        seconds = {name: [] for name in methods}
        outputs = {}
        for round_index in range(args.rounds):
            order = list(methods) if round_index % 2 == 0 else list(methods)[::-1]
            for name in order:
                outputs[name], elapsed = timed(device, methods[name])
                seconds[name].append(elapsed)
                print(f"round {round_index + 1}/{args.rounds}  {name}: {len(prompts) / elapsed:.1f} reviews/s",
                      file=sys.stderr, flush=True)

    generated = [parse_answer(tokenizer.decode(ids, skip_special_tokens=True), label_words)
                 for ids in outputs["generation"]]
    scored = [label_words[index] for index in outputs["scoring"].argmax(dim=-1).tolist()]
    answers = {"generation": generated, "scoring": scored} | {
        name: outputs[name] for name in outputs if name.startswith("predict")}
    return report(args, model_dir, model, len(prompts), seconds, split.answers, answers)


def report(
    args: argparse.Namespace,
    model_dir: Path,
    model,
    count: int,
    seconds: dict[str, list[float]],
    gold: list[str],
    answers: dict[str, list[str | None]],
) -> list[str]:
    """The table, the agreement and, last, `speedup_vs_original: <ratio>`."""
    rate = {name: count * len(times) / sum(times) for name, times in seconds.items()}
    accuracy = {name: sum(g == p for g, p in zip(gold, predicted)) / count for name, predicted in answers.items()}
    how = {
        "generation": ("original", f"generate {args.max_new_tokens} tokens, 1 review per call"),
        "scoring": ("ours", f"label scoring, {args.batch_size} reviews per batch"),
        "predict": ("predict.py", "--input .jsonl --output .jsonl, model loaded"),
        "predict-bf16": ("predict.py-bf16", "the same, the model in bf16 (CPU)"),
    }
    rows = [[*how[name], f"{rate[name]:.1f}", f"{1000 / rate[name]:.1f}", f"{accuracy[name]:.1%}"]
            for name in how if name in rate]
    generated, scored = answers["generation"], answers["scoring"]
    same_as_scoring = sum(p == s for p, s in zip(answers["predict"], scored))
    agree = sum(g == s for g, s in zip(generated, scored))
    unparsed = sum(answer is None for answer in generated)
    per_round = [g / s for g, s in zip(seconds["generation"], seconds["scoring"])]
    config = model.config
    return [
        f"model:    {display_path(Path(model_dir))} ({model.num_parameters() / 1e6:,.1f}M parameters, hidden {config.hidden_size}, "
        f"{config.num_hidden_layers} layers, vocabulary {config.vocab_size:,})",
        f"data:     the first {count} eval reviews of {display_path(args.data)} (cut to --model_max_length {args.model_max_length})",
        f"timing:   {args.rounds} rounds, each method over all {count} reviews per round, alternating which goes "
        "first, after an untimed warm-up batch",
        "",
        *format_table(["method", "how", "reviews/s", "ms/review", "accuracy"], rows, text_columns=2),
        "",
        f"agreement: {agree / count:.1%} of reviews get the same label from both ({agree}/{count}); "
        f"{unparsed} generated answers start with no label word; predict.py gives label scoring's label on "
        f"{same_as_scoring}/{count}",
        "speedup per round (scoring / generation): " + ", ".join(f"{ratio:.2f}" for ratio in per_round),
        *([f"predict_bf16_vs_fp32: {rate['predict-bf16'] / rate['predict']:.2f} (reviews/s in bf16 over fp32; "
           f"bf16 gives fp32's label on {sum(b == f for b, f in zip(answers['predict-bf16'], answers['predict']))}"
           f"/{count})"] if "predict-bf16" in rate else []),
        f"speedup_vs_original: {rate['scoring'] / rate['generation']:.2f}",
    ]


def norm_head_benchmark(args: argparse.Namespace) -> list[str]:
    """Label scoring and generation with NormHead's cached normalised weight, and normalising in every forward."""
    device = detect_device()
    tokenizer = BaichuanTokenizer(vocab_file=str(default_tokenizer()))
    torch.manual_seed(0)
    model = BaichuanForCausalLM(tiny_config(tokenizer.vocab_size, *tokenizer.convert_tokens_to_ids(
        [USER_TOKEN, ASSISTANT_TOKEN]))).to(device.torch_device()).eval()
    head = model.lm_head
    cached, uncached = type(head), type("UncachedNormHead", (type(head),), {
        "normalized_weight": lambda self: F.normalize(self.weight, dim=-1)})
    prompt_format = PromptFormat.from_config(model.config)
    max_length = args.model_max_length or 256
    with tempfile.TemporaryDirectory(prefix="eval_throughput.") as workdir:
        records = read_jsonl(split_jsonl(args.data, "eval", Path(workdir)))[: args.reviews]
    prompts = [prompt_format.prompt_ids(tokenizer, record["review"], max_length)[0] for record in records]
    candidates = candidate_ids(prompt_format, tokenizer)
    work = {
        "scoring": lambda: label_log_probs(model, prompts, candidates, model.config.pad_token_id, args.batch_size),
        "generation": lambda: greedy_generate(model, prompts, model.config.pad_token_id, prompt_format.eos_token_id,
                                              args.max_new_tokens, batch_size=1),
    }
    seconds = {(name, cache): [] for name in work for cache in ("cached", "uncached")}
    for round_index in range(args.rounds):
        for name, cache in seconds if round_index % 2 == 0 else list(seconds)[::-1]:
            head.__class__ = cached if cache == "cached" else uncached
            _, elapsed = timed(device, work[name])
            seconds[name, cache].append(elapsed)
            print(f"round {round_index + 1}/{args.rounds}  {name} {cache}: {len(prompts) / elapsed:.1f} reviews/s",
                  file=sys.stderr, flush=True)
    rate = {key: len(prompts) * len(times) / sum(times) for key, times in seconds.items()}
    rows = [[name, cache, f"{rate[name, cache]:.1f}", f"{1000 / rate[name, cache]:.1f}"] for name, cache in rate]
    speedup = {name: rate[name, "cached"] / rate[name, "uncached"] for name in work}
    config = model.config
    return [
        *header_lines(device, torch.float32),
        f"model:    cpu preset, random init ({model.num_parameters() / 1e6:,.1f}M parameters, hidden "
        f"{config.hidden_size}, {config.num_hidden_layers} layers, vocabulary {config.vocab_size:,})",
        f"data:     the first {len(prompts)} eval reviews of {display_path(args.data)} (prompts cut to {max_length} "
        f"tokens); scoring {args.batch_size} reviews per batch, generation {args.max_new_tokens} tokens, 1 review "
        "per call",
        f"timing:   {args.rounds} rounds, each of the four over all reviews per round, the order reversed every "
        "other round",
        "",
        *format_table(["method", "NormHead", "reviews/s", "ms/review"], rows, text_columns=2),
        "",
        f"norm_head_cache_speedup: scoring {speedup['scoring']:.2f}, generation {speedup['generation']:.2f}",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--model", type=Path, default=None,
                        help="the fine-tuned model folder, or a training output folder (its final model, else its "
                             f"latest complete checkpoint); default: the CPU demo's {display_path(DEMO_RUN)}")
    parser.add_argument("--data", type=Path, default=default_data("eval"),
                        help="eval reviews: eval.jsonl from make_data.py, or waimai_10k.csv (split as "
                             "make_data.py does); by default data/eval.jsonl, else $SHARED_DIR/data/waimai_10k.csv")
    parser.add_argument("--reviews", type=whole_number(), default=500, help="how many eval reviews (the first ones)")
    parser.add_argument("--batch_size", type=whole_number(), default=16, help="label scoring: reviews per forward pass")
    parser.add_argument("--max_new_tokens", type=whole_number(), default=5,
                        help="generation: tokens generated per review, as the original")
    parser.add_argument("--model_max_length", type=whole_number(), default=None,
                        help="most tokens of prompt + answer + eos: longer reviews are cut as in training and "
                             "run_test.py (default: the training run's, else the default recipe's)")
    parser.add_argument("--rounds", type=whole_number(), default=2,
                        help="rounds; each times both methods over all reviews")
    add_dtype_flag(parser)
    parser.add_argument("--norm_head_cache", action="store_true",
                        help="time NormHead's cached normalised weight against none on the cpu preset instead (fp32)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def measure() -> int:
        print("\n".join(norm_head_benchmark(args) if args.norm_head_cache else benchmark(args)))
        return 0

    return report_errors(measure)


if __name__ == "__main__":
    sys.exit(main())
