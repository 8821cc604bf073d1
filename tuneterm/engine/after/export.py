"""Take the model home: a GGUF for llama.cpp and LM Studio, the same with an Ollama Modelfile, an adapter-only GGUF,
or the merged model, each checked against the model that was trained before it is handed over.

Everything that can refuse is checked before any work (`prepare`): the output directory (new or empty), the tools
(`tuneterm[export]`, llama.cpp's converter), the architecture (one llama.cpp's converter knows), the chat template
(one an Ollama TEMPLATE can write), free disk space and memory for merge, conversion and quantization. Then:

1. merge: the adapter into its base, as `tuneterm merge` does (a QLoRA adapter into the 16-bit base), itself checked
   against base + adapter. A full fine-tune's run directory is already the merged model.
2. convert: llama.cpp's convert_hf_to_gguf.py, to the requested 16/32-bit type, or to the lossless type of the
   merged weights followed by llama.cpp's quantizer for the quantized types. The adapter-only GGUF is llama.cpp's
   convert_lora_to_gguf.py, checked over a GGUF of the base converted for the check.
3. check: the round trip (roundtrip.py) on the run's eval prompts.

All of it happens in a staging directory beside OUT_DIR, which becomes OUT_DIR only when the check passes. A failed
check leaves the staging directory as it is (the GGUF, the merged model it was compared with, llama.cpp's log) and
says what differed; a cancelled export removes it. Every export, passed or failed, is recorded in the run directory
(exports.json) and in its run card.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneterm.config import load_config
from tuneterm.engine.after.generate import ADAPTER_FILE, check_readable, read_eval_samples
from tuneterm.engine.after.llamacpp import (
    BITS_PER_WEIGHT,
    CONVERTER_TYPES,
    LOG_FILE,
    NAMED_PRE_TOKENIZER,
    Converter,
    convert_arguments,
    fallback_note,
    find_converter,
    lora_arguments,
    quantize_arguments,
    run_tool,
)
from tuneterm.engine.after.merge import merge, merged_dtype, output_dir_problem
from tuneterm.engine.after.modelfile import MODELFILE, ChatFormat, modelfile_text, read_chat_format
from tuneterm.engine.after.report import EXPORTS_FILE, read_exports, report_of
from tuneterm.engine.after.roundtrip import TOLERANCE, RoundTrip, check_round_trip, gguf_adds_bos
from tuneterm.engine.rundir.layout import CONFIG_FILE
from tuneterm.errors import ExportError, RunDirError
from tuneterm.plan.memory import size
from tuneterm.plan.planner import model_facts
from tuneterm.work import Work

FORMATS = ("gguf", "ollama", "adapter-gguf", "merged")
QUANTS = tuple(TOLERANCE)
"""The types an export writes: those whose round-trip tolerance was measured."""
DEFAULT_QUANT = "q8_0"
EXPORT_RECORD = "tuneterm_export.json"
LOSSLESS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ExportPlan:
    """What `prepare` found: everything the export needs, checked."""

    run_dir: Path
    out_dir: Path
    format: str
    quant: str
    scale: float
    converter: Converter | None
    chat: ChatFormat | None
    params: int
    merged_dtype: str
    method: str
    notes: list[str]
    base_dir: Path | None = None
    """The base model's files, for the adapter GGUF (its converter reads the base's config, the check converts it)."""


@dataclass
class ExportResult:
    format: str
    out_dir: str
    files: list[str]
    quant: str | None
    converter: str | None
    round_trip: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    next_step: str = ""
    """How to use it: the ollama create command, the llama.cpp command line."""
    staging: str | None = None
    """Where a failed export's files were left."""

    @property
    def passed(self) -> bool:
        return self.round_trip is None or bool(self.round_trip.get("passed"))

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "passed": self.passed}


def prepare(run_dir: Path, out_dir: Path, format: str, quant: str | None = None, scale: float = 1.0,
            llama_cpp: Path | None = None, on_phase: Callable[[str], None] = lambda text: None) -> ExportPlan:
    """Every check that can refuse the export, before any work; RunDirError or ExportError saying why."""
    if format not in FORMATS:
        raise RunDirError(f"the format must be one of {', '.join(FORMATS)}, not {format!r}")
    quant = quant or (None if format == "merged" else DEFAULT_QUANT if format != "adapter-gguf" else "f16")
    if format == "merged" and quant is not None:
        raise RunDirError("--quant is for GGUF files: the merged model is written in the dtype it was trained in")
    if quant is not None and quant not in QUANTS:
        raise RunDirError(f"--quant {quant}: llama.cpp types tuneterm exports are {', '.join(QUANTS)}")
    if format == "adapter-gguf" and quant not in CONVERTER_TYPES:
        raise RunDirError(f"--quant {quant}: an adapter GGUF is written as f32, f16 or bf16 (llama.cpp applies it "
                          "over a base of any type)")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir}: not a tuneterm run directory (no {CONFIG_FILE})")
    config = load_config(run_dir / CONFIG_FILE)
    method = str(config.method)
    weights = run_dir / (ADAPTER_FILE if method != "full" else "model.safetensors")
    if not weights.is_file():
        raise RunDirError(f"{run_dir}: no {weights.name} (the run saved no model: it failed or was stopped before its "
                          "first save)")
    check_readable(run_dir, weights)
    if method == "full" and format in ("merged", "adapter-gguf"):
        raise RunDirError(f"{run_dir}: a full fine-tune has no adapter: its run directory is already the whole model "
                          "(export it --format gguf or ollama)")
    if not 0 < scale <= 2:
        raise RunDirError(f"the adapter scale must be above 0 and at most 2, not {scale}")
    problem = output_dir_problem(out_dir)
    if problem:
        raise RunDirError(problem.replace("merging", "exporting"))
    facts = model_facts(config)
    dtype = merged_dtype(config)
    notes: list[str] = []
    converter = chat = None
    if format != "merged":
        converter = find_converter(llama_cpp, on_phase)
        known = converter.architectures
        if known is not None and facts.architecture not in known:
            raise ExportError(f"the architecture of {config.get('model.path')}, {facts.architecture}, is not one "
                              f"llama.cpp's converter ({converter.version}) converts: export --format merged writes "
                              "a model transformers, vLLM and others load")
        if not read_eval_samples(run_dir):
            raise ExportError(f"{run_dir}: the run kept no eval prompts (it had no eval split), so a GGUF could not "
                              "be checked against it: train with data.eval set, or export --format merged")
    if format == "ollama":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(run_dir))
        chat = read_chat_format(lambda messages, generation: str(tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation)), tokenizer.bos_token)
        if chat.trims:
            notes.append("the chat template trims whitespace around each message; Ollama's TEMPLATE passes messages "
                         "as they are, so a message that starts or ends with whitespace is rendered differently")
    base_dir = _base_model_dir(config) if format == "adapter-gguf" else None
    _check_room(out_dir, facts.total_params, dtype, format, quant, method)
    if scale != 1 and format == "adapter-gguf":
        notes.append(f"the adapter GGUF is written at full strength: apply it at {scale:g} (llama.cpp: --lora-scaled "
                     f"FILE {scale:g})")
    return ExportPlan(run_dir, out_dir, format, quant or "", scale, converter, chat, facts.total_params, dtype,
                      method, notes, base_dir)


def _check_room(out_dir: Path, params: int, dtype: str, format: str, quant: str | None, method: str) -> None:
    """Disk: the merged model, the lossless GGUF and the quantized one, all in the staging directory at once.
    Memory: the merge holds the base model (and its copy being saved), the check the merged model and the GGUF."""
    import psutil

    merged = params * BYTES[dtype] if method != "full" else 0
    lossless = params * BYTES[dtype]
    final = params * BITS_PER_WEIGHT.get(quant or "", 0) / 8 if format != "adapter-gguf" else 0
    needed = int((merged + (lossless if format != "merged" else 0) + final) * 1.05)
    free = shutil.disk_usage(out_dir.parent).free
    if free < needed:
        raise RunDirError(f"{out_dir.parent}: {size(free)} free, the export needs about {size(needed)} there (the "
                          f"merged model, the GGUF{' and its quantized copy' if quant not in CONVERTER_TYPES else ''}"
                          "): free some space or choose another disk")
    memory = int(2 * params * BYTES[dtype] * 1.1)
    available = psutil.virtual_memory().available
    if available < memory:
        raise RunDirError(f"the export needs about {size(memory)} of memory (the model twice in {dtype}: merging, and "
                          f"checking the GGUF against the merged model), {size(available)} is available: close other "
                          "programs or export on a machine with more memory")


def export(plan: ExportPlan, work: Work | None = None,
           on_phase: Callable[[str], None] = lambda text: None) -> ExportResult:
    """The export `prepare` planned; the result is recorded in the run directory whether its check passed or not.
    Raises Cancelled (nothing left behind) or ExportError (a failed conversion or check: the files stay in the
    staging directory it names)."""
    work = work or Work()

    def phase(text: str) -> None:
        work.check()
        on_phase(text)

    if plan.format == "merged":
        merged = merge(plan.run_dir, plan.out_dir, plan.scale, phase)
        result = ExportResult("merged", str(plan.out_dir), sorted(p.name for p in plan.out_dir.iterdir()), None,
                              None, None, merged.notes,
                              f'AutoModelForCausalLM.from_pretrained("{plan.out_dir}")')
        record(plan.run_dir, result)
        return result
    staging = Path(tempfile.mkdtemp(prefix=f".{plan.out_dir.name}.partial-", dir=plan.out_dir.parent))
    keep = False
    try:
        result = _export_gguf(plan, staging, work, phase)
        if not result.passed:
            keep = True
            result.staging = str(staging)
            record(plan.run_dir, result)
            differences = "; ".join(result.round_trip["differences"]) if result.round_trip else ""
            raise ExportError(f"the GGUF did not pass the round-trip check: {differences}. Nothing was written to "
                              f"{plan.out_dir}; the files are in {staging}")
        if plan.out_dir.exists():
            plan.out_dir.rmdir()  # empty, checked by prepare
        os.replace(staging / "out", plan.out_dir)
        record(plan.run_dir, result)
        return result
    except ExportError:
        keep = True
        raise
    finally:
        if not keep:
            shutil.rmtree(staging, ignore_errors=True)


def _export_gguf(plan: ExportPlan, staging: Path, work: Work, phase: Callable[[str], None]) -> ExportResult:
    assert plan.converter is not None
    out = staging / "out"
    out.mkdir()
    log = out / LOG_FILE
    lossless = LOSSLESS[plan.merged_dtype]
    notes = list(plan.notes)
    if plan.method == "full":
        merged_dir = plan.run_dir
    else:
        merged_dir = staging / "merged"
        notes += merge(plan.run_dir, merged_dir, plan.scale if plan.format != "adapter-gguf" else 1.0, phase).notes
    name = _file_stem(plan.run_dir.name)
    lora = None
    if plan.format == "adapter-gguf":
        assert plan.base_dir is not None
        base_dir = plan.base_dir
        lora = out / f"{name}-adapter-{plan.quant}.gguf"
        phase(f"converting the adapter with llama.cpp's convert_lora_to_gguf.py ({plan.converter.version})")
        run_tool(lora_arguments(plan.converter, plan.run_dir, base_dir, lora, plan.quant), "converting the adapter",
                 work, log)
        gguf = staging / f"base-{lossless}.gguf"
        phase("converting the base model, to check the adapter over it")
        run_tool(convert_arguments(plan.converter, base_dir, gguf, lossless), "converting the base model", work, log)
        check_quant = plan.quant  # the adapter's type: the base is converted losslessly
    else:
        gguf = out / f"{name}-{plan.quant}.gguf"
        direct = plan.quant in CONVERTER_TYPES
        converted = gguf if direct else staging / f"{name}-{lossless}.gguf"
        phase(f"converting with llama.cpp's convert_hf_to_gguf.py ({plan.converter.version})")
        run_tool(convert_arguments(plan.converter, merged_dir, converted, plan.quant if direct else lossless),
                 "converting", work, log)
        if not direct:
            phase(f"quantizing to {plan.quant} with llama.cpp's quantizer")
            run_tool(quantize_arguments(converted, gguf, plan.quant), f"quantizing to {plan.quant}", work, log)
            converted.unlink()
            fallback = fallback_note(log.read_text(encoding="utf-8", errors="replace"))
            if fallback:
                notes.append(fallback)
        check_quant = plan.quant
    phase("round-trip check: the GGUF in llama.cpp against the merged model")
    check: RoundTrip = check_round_trip(gguf, check_quant, merged_dir, read_eval_samples(plan.run_dir), work,
                                        lora=lora, lora_scale=plan.scale, on_phase=phase)
    if NAMED_PRE_TOKENIZER in log.read_text(encoding="utf-8", errors="replace"):
        notes.append("llama.cpp's converter did not know this tokenizer by its hash; its tokenizer.json declares "
                     "GPT-2's byte-level pre-tokenizer, so llama.cpp's gpt-2 pre-tokenizer was named (the round-trip "
                     "check compared llama.cpp's tokens with transformers')")
    (out / "round_trip.json").write_text(json.dumps(check.to_json(), indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    next_step = f"llama-cli -m {plan.out_dir / gguf.name}"
    if plan.format == "adapter-gguf":
        assert lora is not None
        next_step = f"llama-cli -m BASE.gguf --lora{'-scaled' if plan.scale != 1 else ''} {plan.out_dir / lora.name}" \
                    + (f" {plan.scale:g}" if plan.scale != 1 else "")
    if plan.format == "ollama":
        assert plan.chat is not None
        from tuneterm.engine.after.generate import stop_token_ids

        tokenizer = _tokenizer(plan.run_dir)
        stops = [tokenizer.convert_ids_to_tokens(i) for i in stop_token_ids(tokenizer, None)]
        (out / MODELFILE).write_text(modelfile_text(gguf.name, plan.chat, stops, gguf_adds_bos(gguf)),
                                     encoding="utf-8")
        next_step = f"ollama create {_ollama_name(plan.run_dir.name)} -f {plan.out_dir / MODELFILE}"
    files = sorted([*(p.name for p in out.iterdir()), EXPORT_RECORD])
    result = ExportResult(plan.format, str(plan.out_dir), files, plan.quant, plan.converter.version, check.to_json(),
                          notes, next_step)
    (out / EXPORT_RECORD).write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    return result


def _tokenizer(run_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(run_dir))


def _base_model_dir(config: Any) -> Path:
    """The base model's files on this machine: its directory, or its snapshot in the Hugging Face cache (training
    downloaded it)."""
    path = str(config.get("model.path"))
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, revision=config.get("model.revision"), local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises several kinds for "not in the cache"
        raise ExportError(f"{path} is not in this machine's Hugging Face cache ({exc}): the adapter GGUF needs the "
                          "base model's files") from None


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def _ollama_name(name: str) -> str:
    """Ollama model names: lowercase letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._") or "tuned"


def record(run_dir: Path, result: ExportResult) -> None:
    """Append the export to the run directory's exports.json and rewrite the run card with it."""
    from tuneterm.engine.after.card import write_card

    path = run_dir / EXPORTS_FILE
    exports = read_exports(run_dir)
    exports.append(result.to_json())
    path.write_text(json.dumps(exports, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_card(report_of(run_dir))

