"""llama.cpp's own tools: its converter (convert_hf_to_gguf.py, convert_lora_to_gguf.py), its quantizer, its runtime.

tuneterm never writes GGUF weights itself: the file formats and tensor layouts change with llama.cpp, and only its
own converter keeps up. Where each tool comes from:

- The runtime and the quantizer: llama-cpp-python (`pip install 'tuneterm[export]'`), which compiles llama.cpp as
  it installs; the quantizer is its `llama_model_quantize` binding, the function llama.cpp's llama-quantize calls.
- The converter: the wheel llama-cpp-python builds carries no Python script of llama.cpp, but its source archive
  does (vendor/llama.cpp). tuneterm takes the converter, its `conversion` package and its own gguf-py from the
  archive of the installed version, so that the converter and the runtime that loads its output are the same
  llama.cpp, and keeps them in the cache. pip fetches the archive from the package index the first time; without
  network, TUNETERM_LLAMA_CPP (or `--llama-cpp`) names the archive or a llama.cpp checkout.

Both run in processes of their own: the converter imports its own gguf-py and half of transformers, and the
quantizer is one C call that cannot be interrupted. Cancelling stops the process. The converter's output is kept in
a log beside the files, and a failure quotes its last lines.

One thing the converter cannot decide by itself is named for it: which pre-tokenizer a byte-level BPE tokenizer
uses. It knows tokenizers of published models by the hash of their tokens on a fixed text, and refuses any other
(a tokenizer trained for a model of one's own, such as the demo's). When the tokenizer's own tokenizer.json
declares GPT-2's byte-level pre-tokenizer and nothing else, llama.cpp's "gpt-2" pre-tokenizer is that one, and it
is named when the converter's table does not know the hash. The round-trip check then compares llama.cpp's tokens
with transformers' on the eval prompts, so a wrong answer cannot pass unseen.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuneterm.cache import cache_root
from tuneterm.errors import Cancelled, ExportError
from tuneterm.work import Work

SOURCE_ENV = "TUNETERM_LLAMA_CPP"
INSTALL = ("pip install 'tuneterm[export]' (it compiles llama.cpp with llama-cpp-python: a C++ compiler and CMake "
           "are needed, and a few minutes)")
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion", "gguf-py", "LICENSE")
LOG_FILE = "llama.cpp.log"

QUANT_FTYPES = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q6_k": 18, "q5_k_m": 17, "q5_k_s": 16, "q5_0": 8,
                "q4_k_m": 15, "q4_k_s": 14, "q4_0": 2, "q3_k_m": 12, "q2_k": 10}
"""The types `--quant` takes, with llama.cpp's llama_ftype of each (LLAMA_FTYPE_ALL_F32, _MOSTLY_F16...)."""
CONVERTER_TYPES = ("f32", "f16", "bf16")
"""Types the converter writes itself; the others are quantized from a lossless conversion by llama.cpp's
quantizer."""
BITS_PER_WEIGHT = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q6_k": 6.6, "q5_k_m": 5.7, "q5_k_s": 5.5,
                   "q5_0": 5.5, "q4_k_m": 4.9, "q4_k_s": 4.6, "q4_0": 4.5, "q3_k_m": 3.9, "q2_k": 3.4}
"""Average bits a weight takes in each type (llama.cpp's quantize table), for the disk space an export needs."""
NAMED_PRE_TOKENIZER = "tuneterm: the converter does not know this tokenizer's hash"
"""What the converter's process writes when tuneterm named the pre-tokenizer for it."""


def runtime_version() -> str | None:
    """The installed llama-cpp-python's version, or None."""
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_tools() -> list[str]:
    """What `tuneterm[export]` would install and is not installed, each with what it is for."""
    import importlib

    wanted = {"llama_cpp": "llama-cpp-python (llama.cpp's runtime and quantizer)",
              "sentencepiece": "sentencepiece (the converter reads SentencePiece tokenizers with it)"}
    missing = []
    for module, what in wanted.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(what)
    return missing


def require_tools() -> None:
    missing = missing_tools()
    if missing:
        raise ExportError(f"GGUF export needs {', '.join(missing)}, not installed here: {INSTALL}")


@dataclass(frozen=True)
class Converter:
    """llama.cpp's conversion scripts in one directory, and which llama.cpp they are."""

    directory: Path
    version: str
    """"llama.cpp 0c1e57098 (llama-cpp-python 0.3.36)": recorded with every export."""

    @property
    def architectures(self) -> set[str] | None:
        """The Hugging Face architectures this converter converts, read from its table without importing it (that
        imports torch); None when its layout has no such table."""
        try:
            tree = ast.parse((self.directory / "conversion" / "__init__.py").read_text(encoding="utf-8"))
        except (OSError, SyntaxError):
            return None
        for node in tree.body:
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "TEXT_MODEL_MAP" \
                    and isinstance(node.value, ast.Dict):
                return {key.value for key in node.value.keys if isinstance(key, ast.Constant)
                        and isinstance(key.value, str)}
        return None


def _is_converter(directory: Path) -> bool:
    return all((directory / part).exists() for part in CONVERTER_PARTS[:4])


def find_converter(source: Path | None = None, on_phase: Callable[[str], None] = lambda text: None) -> Converter:
    """The converter of the installed llama-cpp-python's llama.cpp: from the cache, from `source` (or
    TUNETERM_LLAMA_CPP: the source archive, or a llama.cpp checkout used as it is), or fetched with pip."""
    require_tools()
    version = runtime_version() or ""
    named = source or (Path(os.environ[SOURCE_ENV]).expanduser() if os.environ.get(SOURCE_ENV) else None)
    if named is not None and named.is_dir():
        if not _is_converter(named):
            raise ExportError(f"{named} is not a llama.cpp checkout: it has no {' or '.join(CONVERTER_PARTS[:4])}")
        if (named / "VERSION.json").is_file():  # one tuneterm unpacked
            return Converter(named, json.loads((named / "VERSION.json").read_text(encoding="utf-8"))["version"])
        return Converter(named, f"llama.cpp checkout {named}{_checkout_commit(named)}")
    target = cache_root() / f"llama.cpp-converter-{version}"
    if (target / "VERSION.json").is_file():
        return Converter(target, json.loads((target / "VERSION.json").read_text(encoding="utf-8"))["version"])
    if named is not None and not named.is_file():
        raise ExportError(f"{named} (from {'--llama-cpp' if source else SOURCE_ENV}) does not exist")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".llama.cpp-") as scratch:
        archive = named or _download(version, Path(scratch), on_phase)
        on_phase(f"unpacking llama.cpp's converter from {archive.name}")
        staging = Path(scratch) / "converter"
        described = _extract(archive, staging, version)
        try:
            staging.rename(target)
        except OSError:  # another process unpacked it first
            pass
    return Converter(target, described)


def _checkout_commit(directory: Path) -> str:
    head = directory / ".git" / "HEAD"
    try:
        text = head.read_text(encoding="utf-8").strip()
        if text.startswith("ref: "):
            text = (directory / ".git" / text[5:]).read_text(encoding="utf-8").strip()
        return f" at {text[:9]}"
    except OSError:
        return ""


def _download(version: str, into: Path, on_phase: Callable[[str], None]) -> Path:
    on_phase(f"fetching llama.cpp's converter: the source archive of llama-cpp-python {version} (about 75 MB), "
             "with pip")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={version}", "-d", str(into)]
    done = subprocess.run(command, capture_output=True, text=True)
    archives = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not archives:
        reason = (done.stderr.strip().splitlines() or ["pip found nothing"])[-1]
        raise ExportError(
            f"llama.cpp's converter is not in the cache and could not be fetched ({reason}). It comes from the source "
            f"archive of the installed llama-cpp-python {version}: where the package index can be reached, run "
            f"`pip download --no-deps --no-binary :all: llama-cpp-python=={version}` and give the archive with "
            f"--llama-cpp FILE (or {SOURCE_ENV}=FILE); a llama.cpp checkout works too (--llama-cpp DIR)")
    return archives[0]


def _extract(archive: Path, target: Path, version: str) -> str:
    """The converter's files from a llama-cpp-python source archive into `target`; returns its version text."""
    try:
        with tarfile.open(archive) as tar:
            root = f"llama_cpp_python-{version}/"
            vendored = root + "vendor/llama.cpp/"
            wanted = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(vendored)
                      and m.name[len(vendored):].split("/")[0] in CONVERTER_PARTS and ".." not in m.name.split("/")]
            if not wanted:
                raise ExportError(f"{archive} is not the source archive of llama-cpp-python {version} (the version "
                                  f"installed here): it has no {vendored}convert_hf_to_gguf.py")
            for member in wanted:
                path = target / member.name[len(vendored):]
                path.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                path.write_bytes(source.read())
            changelog = tar.extractfile(root + "CHANGELOG.md") if root + "CHANGELOG.md" in tar.getnames() else None
            log = changelog.read().decode("utf-8", "replace") if changelog else ""
    except (tarfile.TarError, OSError) as exc:
        raise ExportError(f"{archive} cannot be read as a source archive: {exc}") from None
    section = log.split(f"## [{version}]", 1)[-1].split("\n## [", 1)[0] if f"## [{version}]" in log else ""
    commit = re.search(r"llama\.cpp@([0-9a-f]{7,40})", section)
    described = f"llama.cpp {commit.group(1) if commit else '(commit not recorded)'} (llama-cpp-python {version})"
    (target / "VERSION.json").write_text(json.dumps({"version": described, "llama_cpp_python": version}) + "\n",
                                         encoding="utf-8")
    return described


def gpt2_pre_tokenizer(model_dir: Path) -> bool:
    """The tokenizer declares GPT-2's byte-level pre-tokenizer (its regex, no other split) and no normalizer:
    llama.cpp's "gpt-2" pre-tokenizer is the same."""
    try:
        spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    pre = spec.get("pre_tokenizer") or {}
    return (spec.get("model", {}).get("type") == "BPE" and spec.get("normalizer") is None
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"))


def run_tool(arguments: list[str], stage: str, work: Work, log: Path) -> None:
    """One of llama.cpp's tools in a process of its own (this module's `main`), its output appended to `log`;
    stopped when the work is cancelled. A failure quotes the log's last lines."""
    command = [sys.executable, "-m", "tuneterm.engine.after.llamacpp", *arguments]
    started = time.monotonic()
    with open(log, "a", encoding="utf-8") as output:
        output.write(f"$ {' '.join(command)}\n")
        output.flush()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            while process.poll() is None:
                work.step(stage, int(time.monotonic() - started), force=True)
                time.sleep(0.2)
        except Cancelled:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
    if process.returncode != 0:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        last = [line for line in lines if "Error" in line or "error" in line][-3:] or lines[-3:]
        raise ExportError(f"{stage} failed (exit {process.returncode}): {' | '.join(last)} (the whole output: {log})")


def convert_arguments(converter: Converter, model_dir: Path, out_file: Path, outtype: str) -> list[str]:
    pre = "gpt-2" if gpt2_pre_tokenizer(model_dir) else "-"
    return ["convert", str(converter.directory), pre, str(model_dir), "--outfile", str(out_file), "--outtype", outtype]


def lora_arguments(converter: Converter, adapter_dir: Path, base_dir: Path, out_file: Path, outtype: str) -> list[str]:
    return ["convert-lora", str(converter.directory), str(adapter_dir), "--base", str(base_dir),
            "--outfile", str(out_file), "--outtype", outtype]


def _convert(converter_dir: str, pre_tokenizer: str, arguments: list[str], script: str) -> None:
    import runpy

    sys.path[:0] = [converter_dir, str(Path(converter_dir) / "gguf-py")]
    if pre_tokenizer != "-":
        from conversion import base

        known = base.TextModel.get_vocab_base_pre

        def get_vocab_base_pre(self: object, tokenizer: object) -> str:
            try:
                return str(known(self, tokenizer))
            except NotImplementedError:
                print(f"{NAMED_PRE_TOKENIZER}; its tokenizer.json declares GPT-2's byte-level pre-tokenizer: "
                      f"{pre_tokenizer}", flush=True)
                return pre_tokenizer

        base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [str(Path(converter_dir) / script), *arguments]
    runpy.run_path(sys.argv[0], run_name="__main__")


def _quantize(source: str, target: str, quant: str) -> int:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[quant]
    params.nthread = os.cpu_count() or 1
    return int(llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params)))


def main(arguments: list[str]) -> int:
    """python -m tuneterm.engine.after.llamacpp convert|convert-lora|quantize ...: what run_tool starts; `fetch`
    unpacks the converter into the cache (fetching it with pip if need be) and prints where it is."""
    action, *rest = arguments
    if action == "fetch":
        print(find_converter(Path(rest[0]) if rest else None, lambda text: print(text, file=sys.stderr)).directory)
    elif action == "convert":
        _convert(rest[0], rest[1], rest[2:], "convert_hf_to_gguf.py")
    elif action == "convert-lora":
        _convert(rest[0], "-", rest[1:], "convert_lora_to_gguf.py")
    elif action == "quantize":
        return _quantize(*rest)
    return 0


def quantize_arguments(source: Path, target: Path, quant: str) -> list[str]:
    return ["quantize", str(source), str(target), quant]


def fallback_note(log: str) -> str | None:
    """What llama.cpp's quantizer stored in another type than the one asked because a tensor's rows do not fill
    its blocks (k-quants store rows in blocks of 256 values: the tiny demo model's rows of 128 do not), from the
    quantizer's own report in its output."""
    fallbacks = re.findall(r"^warning: (\S+)\s+- ncols\s+(\d+) not divisible by (\d+) \(required for type\s+(\w+)\) "
                           r"-> falling back to\s+(\w+)", log, re.MULTILINE)
    if not fallbacks:
        return None
    moves = sorted({f"{wanted} to {used}" for _, _, _, wanted, used in fallbacks})
    lengths = sorted({int(columns) for _, columns, _, _, _ in fallbacks})
    blocks = sorted({int(block) for _, _, block, _, _ in fallbacks})
    return (f"{len(fallbacks)} tensors have rows of {', '.join(map(str, lengths))} values, not a multiple of "
            f"{', '.join(map(str, blocks))} (the block of the type asked for): llama.cpp's quantizer fell back from "
            f"{', '.join(moves)} for them")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
