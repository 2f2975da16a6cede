"""llm_lora: LoRA fine-tuning (peft) of a causal language model on JSON Lines; 4-bit QLoRA on a GPU.

The dataset holds one JSON object per line, all in one format: `{"prompt": ..., "completion": ...}`
or chat `{"messages": [{"role": ..., "content": ...}, ...]}`. The loss counts only what the model
should learn to write: the completion, or the assistant turns (rendered with the base model's chat
template when it has one, else as "role: content" lines), each followed by the end-of-sequence
token so that the tuned model learns to stop.

What the run holds, for llm_chat to serve it by its run id:
- `adapter/`: the peft adapter (adapter_config.json, adapter_model.safetensors) and the tokenizer;
- `model` (when mergeAdapter): the base model with the adapter merged in, in the base model's dtype,
  as an MLflow transformers model (task text-generation), registered under customModelName;
- params `baseModel`, `quantization` ("4bit-nf4" or "none"), `format`, `rows`, the hyperparameters,
  and `loraTargetModules`, `trainableParameters`, `trainExamples`, `totalSteps`, `truncatedExamples`,
  `droppedExamples`; metrics `loss` per optimizer step, `epoch_loss` per epoch, and `progress_step`,
  `progress_total_steps`, `progress_epoch`, `progress_total_epochs`, which the task status reads.
"""

import gc
import importlib.util
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import mlflow
import torch

from models.base import TrainContext, TrainingError
from models.datasets import read_jsonl
from models.logs import event
from models.spec import MODEL_ARTIFACT_PATH, QLORA_ENV

ADAPTER_ARTIFACT_PATH = "adapter"
PROMPT_COMPLETION = "prompt_completion"
CHAT = "chat"
# Setting this to 0/false turns 4-bit QLoRA off on a GPU (a profile with qlora_on_gpu: false).
QUANTIZATION_NONE = "none"
QUANTIZATION_4BIT = "4bit-nf4"
# LoRA on every linear layer but the output head (the QLoRA recipe): works for any architecture,
# where peft's per-architecture defaults (attention projections only) know a fixed list.
TARGET_MODULES = "all-linear"
# Labels with this value are left out of the loss (transformers' and PyTorch's ignore_index).
IGNORE_INDEX = -100
MAX_GRAD_NORM = 1.0

Example = dict[str, Any]
# A piece of an example: text (or token ids) and whether the loss counts it.
Piece = tuple[str | list[int], bool]


@dataclass
class TextDataset:
    path: str
    format: str  # PROMPT_COMPLETION or CHAT
    # (line number in the file, example): {"prompt", "completion"} or {"messages"}
    examples: list[tuple[int, Example]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"rows": len(self.examples), "format": self.format}


def _row_format(line: int, record: dict[str, Any]) -> str:
    has_chat = "messages" in record
    has_prompt = "prompt" in record or "completion" in record
    if has_chat and has_prompt:
        raise TrainingError(f"dataset line {line} has both \"messages\" and \"prompt\"/\"completion\"; use one")
    if has_chat:
        return CHAT
    if has_prompt:
        return PROMPT_COMPLETION
    raise TrainingError(
        f"dataset line {line} is neither {{\"prompt\", \"completion\"}} nor chat {{\"messages\": [...]}}; "
        f"its keys: {sorted(record)}"
    )


def _check_prompt_completion(line: int, record: dict[str, Any]) -> Example:
    prompt, completion = record.get("prompt"), record.get("completion")
    if not isinstance(prompt, str):
        raise TrainingError(f"dataset line {line}: \"prompt\" must be a string")
    if not isinstance(completion, str) or not completion:
        raise TrainingError(f"dataset line {line}: \"completion\" must be a non-empty string")
    return {"prompt": prompt, "completion": completion}


def _check_chat(line: int, record: dict[str, Any]) -> Example:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise TrainingError(f"dataset line {line}: \"messages\" must be a non-empty list")
    checked = []
    for index, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str) and message["role"]
                and isinstance(message.get("content"), str)):
            raise TrainingError(
                f"dataset line {line}: messages[{index}] must be {{\"role\": string, \"content\": string}}"
            )
        checked.append({"role": message["role"], "content": message["content"]})
    if not any(m["role"] == "assistant" for m in checked):
        raise TrainingError(f"dataset line {line}: no \"assistant\" message, so nothing to learn from it")
    return {"messages": checked}


def parse_text_dataset(path: str, records: list[tuple[int, dict[str, Any]]]) -> TextDataset:
    """Check each record against the format of the first one, naming the line of the first bad one."""
    first_line, first = records[0]
    fmt = _row_format(first_line, first)
    examples = []
    for line, record in records:
        row_format = _row_format(line, record)
        if row_format != fmt:
            raise TrainingError(
                f"dataset line {line} is in {row_format} format but line {first_line} is {fmt}; use one format"
            )
        check = _check_chat if fmt == CHAT else _check_prompt_completion
        examples.append((line, check(line, record)))
    return TextDataset(path=path, format=fmt, examples=examples)


# -- tokenization ------------------------------------------------------------------------------


def _eos(tokenizer: Any) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def prompt_completion_pieces(tokenizer: Any, example: Example) -> list[Piece]:
    completion = example["completion"]
    # The end token is what teaches the model to stop after a completion.
    ending = [] if tokenizer.eos_token and completion.endswith(tokenizer.eos_token) else _eos(tokenizer)
    return [(example["prompt"], False), (completion, True), (ending, True)]


def _common_prefix_length(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def chat_pieces(tokenizer: Any, messages: list[dict[str, str]]) -> list[Piece]:
    """The conversation up to its last assistant turn, with the assistant turns marked for the loss."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    messages = messages[: last + 1]  # later turns teach nothing: causal attention never sees them
    if not tokenizer.chat_template:
        pieces: list[Piece] = []
        for message in messages:
            if message["role"] == "assistant":
                pieces += [("assistant: ", False), (message["content"], True), (_eos(tokenizer), True), ("\n", False)]
            else:
                pieces.append((f"{message['role']}: {message['content']}\n", False))
        return pieces

    def render(turns: list[dict[str, str]], generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)

    full = render(messages)
    # Each assistant turn is the text its conversation so far adds after the generation prompt (its
    # end-of-turn tokens included), which is exactly what the model writes when served.
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        upto = full if index == last else render(messages[: index + 1])
        if not full.startswith(upto):
            continue  # a template that renders earlier turns differently: no loss on this one
        try:
            prompt = render(messages[:index], generation_prompt=True) if index else ""
        except Exception:
            if index:
                continue
            prompt = ""
        start = max(_common_prefix_length(prompt, upto), spans[-1][1] if spans else 0)
        if start < len(upto):
            spans.append((start, len(upto)))
    pieces, position = [], 0
    for start, end in spans:
        if start > position:
            pieces.append((full[position:start], False))
        pieces.append((full[start:end], True))
        position = end
    return pieces


def encode(tokenizer: Any, pieces: list[Piece], special_tokens: bool) -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE_INDEX where the loss does not count).

    Pieces are tokenized one by one, so the prompt's tokens are the ones the server sees when it
    tokenizes the same prompt alone. `special_tokens` lets the tokenizer add its own (a BOS) to the
    first piece; a chat template writes those into the text itself.
    """
    ids: list[int] = []
    labels: list[int] = []
    for index, (piece, trained) in enumerate(pieces):
        if isinstance(piece, list):
            tokens = piece
        else:
            tokens = tokenizer(piece, add_special_tokens=special_tokens and index == 0)["input_ids"]
        ids += tokens
        labels += tokens if trained else [IGNORE_INDEX] * len(tokens)
    return ids, labels


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad one batch to its longest example; padding is masked out of attention and loss."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, targets) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(targets)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids.to(device), "labels": labels.to(device), "attention_mask": attention.to(device)}


# -- the handler --------------------------------------------------------------------------------


def qlora_available(device: str) -> bool:
    """4-bit QLoRA runs on a CUDA device with bitsandbytes installed, unless $MLOPS_LLM_QLORA turns it off."""
    if device != "cuda" or os.environ.get(QLORA_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if importlib.util.find_spec("bitsandbytes") is None:
        _log("bitsandbytes is not installed: LoRA on the unquantized model instead of 4-bit QLoRA")
        return False
    return True


def _log(message: str, **fields: object) -> None:
    event(message, **fields)


def _pip_requirements() -> list[str]:
    import transformers

    return [f"transformers=={transformers.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}"]


class LoraFineTuneHandler:
    def load_dataset(self, path: str, target_column: str | None) -> TextDataset:
        if target_column is not None:
            raise TrainingError("targetColumn does not apply to llm_lora: each JSONL line names its own fields")
        return parse_text_dataset(path, read_jsonl(path))

    def train(self, data: TextDataset, context: TrainContext) -> dict[str, float]:
        import transformers
        from peft import LoraConfig, get_peft_model

        hp = context.hyperparameters
        base = context.initial_model_uri
        if not base:
            raise TrainingError("initialModelFilePath must name the base model to fine-tune")
        merge = bool(hp["mergeAdapter"])
        if context.registered_model_name and not merge:
            raise TrainingError("customModelName registers the merged model: set mergeAdapter to true, "
                                "or leave customModelName empty to log the adapter alone")
        seed = int(hp["seed"])
        transformers.set_seed(seed)
        quantization = QUANTIZATION_4BIT if qlora_available(context.device) else QUANTIZATION_NONE
        # The tokenizer first: bad examples fail, and the status shows the step total, before a large
        # base model takes minutes to load.
        tokenizer = self._load_tokenizer(base)
        examples = self._encode_all(tokenizer, data, int(hp["maxSeqLength"]))
        epochs = int(hp["numEpoch"])
        total_steps = epochs * math.ceil(len(examples) / int(hp["numBatch"]))
        mlflow.log_metrics({"progress_step": 0, "progress_total_steps": total_steps, "progress_epoch": 0,
                            "progress_total_epochs": epochs}, step=0, synchronous=False)

        started = time.perf_counter()
        model, base_dtype = self._load_model(base, context.device, quantization)
        _log("base model loaded", baseModel=base, quantization=quantization, dtype=str(base_dtype),
             seconds=round(time.perf_counter() - started, 2))
        lora = LoraConfig(r=int(hp["loraRank"]), lora_alpha=int(hp["loraAlpha"]),
                          lora_dropout=float(hp["loraDropout"]), target_modules=TARGET_MODULES,
                          task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, lora)
        mlflow.log_params({"baseModel": base, "quantization": quantization, "loraTargetModules": TARGET_MODULES,
                           "trainableParameters": sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
                           "trainExamples": len(examples), "totalSteps": total_steps})
        pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
        steps, epoch_loss = self._fit(peft_model, examples, pad_id, hp, total_steps)

        started = time.perf_counter()
        merged = None
        with tempfile.TemporaryDirectory(prefix="adapter-") as adapter_dir:
            peft_model.save_pretrained(adapter_dir)
            tokenizer.save_pretrained(adapter_dir)
            mlflow.log_artifacts(adapter_dir, ADAPTER_ARTIFACT_PATH)
            if merge and quantization == QUANTIZATION_4BIT:
                # 4-bit weights cannot take the adapter exactly: merge it into the base model as stored,
                # once the quantized model has left the GPU (these are the last references to it).
                del peft_model, model
                gc.collect()
                torch.cuda.empty_cache()
                merged = self._merge_from_files(base, adapter_dir, base_dtype)
            elif merge:
                merged = peft_model.merge_and_unload()
        if merged is not None:
            self._log_merged(merged, tokenizer, base_dtype, context)
        _log("model logged", artifactPaths=[ADAPTER_ARTIFACT_PATH, *([MODEL_ARTIFACT_PATH] if merge else [])],
             registeredModel=context.registered_model_name, seconds=round(time.perf_counter() - started, 2))
        return {"epoch_loss": epoch_loss, "steps": float(steps)}

    @staticmethod
    def _fit(peft_model: Any, examples: list[tuple[list[int], list[int]]], pad_id: int, hp: dict[str, Any],
             total_steps: int) -> tuple[int, float]:
        """The training loop: AdamW on the adapter's weights; returns the steps taken and the last epoch's loss."""
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        device = trainable[0].device
        batch, epochs = int(hp["numBatch"]), int(hp["numEpoch"])
        optimizer = torch.optim.AdamW(trainable, lr=float(hp["learningRate"]), weight_decay=0.0)
        order_rng = torch.Generator().manual_seed(int(hp["seed"]))
        progress = {"progress_total_steps": total_steps, "progress_total_epochs": epochs}
        peft_model.config.use_cache = False  # the KV cache only costs memory while training
        peft_model.train()
        step = 0
        epoch_loss = float("nan")
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            order = torch.randperm(len(examples), generator=order_rng).tolist()
            losses = []
            for start in range(0, len(order), batch):
                inputs = collate([examples[i] for i in order[start : start + batch]], pad_id, device)
                loss = peft_model(**inputs).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
                optimizer.step()
                step += 1
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingError(f"training diverged at step {step} (loss is {value}); lower learningRate")
                losses.append(value)
                mlflow.log_metrics({"loss": value, **progress, "progress_step": step, "progress_epoch": epoch},
                                   step=step, synchronous=False)
                _log("step", step=step, totalSteps=total_steps, epoch=epoch, epochs=epochs, loss=round(value, 6))
            epoch_loss = sum(losses) / len(losses)
            mlflow.log_metric("epoch_loss", epoch_loss, step=epoch, synchronous=False)
            _log("epoch", epoch=epoch, epochs=epochs, loss=round(epoch_loss, 6),
                 seconds=round(time.perf_counter() - started, 3))
        peft_model.eval()
        return step, epoch_loss

    @staticmethod
    def _load_tokenizer(base: str) -> Any:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(base)
        except Exception as exc:
            raise TrainingError(f"cannot load the tokenizer of base model '{base}': {exc}") from None

    @staticmethod
    def _load_model(base: str, device: str, quantization: str) -> tuple[Any, torch.dtype]:
        """The base model ready for LoRA, and the dtype its weights are stored in."""
        from transformers import AutoConfig, AutoModelForCausalLM

        try:
            base_dtype = AutoConfig.from_pretrained(base).dtype or torch.float32
            if isinstance(base_dtype, str):
                base_dtype = getattr(torch, base_dtype)
            if quantization == QUANTIZATION_4BIT:
                from peft import prepare_model_for_kbit_training
                from transformers import BitsAndBytesConfig

                compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                quantized = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
                model = AutoModelForCausalLM.from_pretrained(base, quantization_config=quantized, dtype=compute,
                                                             device_map={"": torch.cuda.current_device()})
                # Casts norms to float32 and turns on gradient checkpointing: QLoRA's memory recipe.
                return prepare_model_for_kbit_training(model), base_dtype
            if device == "cuda":
                # float16 weights without loss scaling underflow gradients; bfloat16 does not.
                dtype = torch.bfloat16 if base_dtype == torch.float16 and torch.cuda.is_bf16_supported() else base_dtype
            else:
                dtype = torch.float32  # half precision is slow, and partly missing, on CPUs
            return AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device), base_dtype
        except TrainingError:
            raise
        except Exception as exc:
            raise TrainingError(f"cannot load base model '{base}': {type(exc).__name__}: {exc}") from None

    @staticmethod
    def _encode_all(tokenizer: Any, data: TextDataset, max_length: int) -> list[tuple[list[int], list[int]]]:
        encoded, truncated, dropped = [], 0, []
        for line, example in data.examples:
            if data.format == CHAT:
                try:
                    pieces = chat_pieces(tokenizer, example["messages"])
                except Exception as exc:
                    raise TrainingError(
                        f"dataset line {line}: the base model's chat template cannot render it: {exc}"
                    ) from None
                ids, labels = encode(tokenizer, pieces, special_tokens=False)
            else:
                ids, labels = encode(tokenizer, prompt_completion_pieces(tokenizer, example), special_tokens=True)
            truncated += len(ids) > max_length
            ids, labels = ids[:max_length], labels[:max_length]
            if all(label == IGNORE_INDEX for label in labels):
                dropped.append(line)  # its answer lies past maxSeqLength: nothing to learn
                continue
            encoded.append((ids, labels))
        if dropped:
            _log("examples without answer tokens within maxSeqLength are left out", count=len(dropped),
                 lines=dropped[:20])
        if not encoded:
            raise TrainingError(f"no example keeps any completion/assistant token within maxSeqLength={max_length}; "
                                "raise maxSeqLength or shorten the prompts")
        mlflow.log_params({"truncatedExamples": truncated, "droppedExamples": len(dropped)})
        return encoded

    @staticmethod
    def _merge_from_files(base: str, adapter_dir: str, dtype: torch.dtype) -> Any:
        """The base model, unquantized on the CPU, with the saved adapter merged in."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        full = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        return PeftModel.from_pretrained(full, adapter_dir).merge_and_unload()

    @staticmethod
    def _log_merged(merged: Any, tokenizer: Any, dtype: torch.dtype, context: TrainContext) -> None:
        """The MLflow transformers model llm_chat loads from runs:/<id>/model (and the registry)."""
        merged = merged.to(device="cpu", dtype=dtype)
        merged.config.use_cache = True  # generation wants the KV cache that training turned off
        mlflow.transformers.log_model(
            transformers_model={"model": merged, "tokenizer": tokenizer},
            name=MODEL_ARTIFACT_PATH,
            task="text-generation",
            torch_dtype=dtype,
            registered_model_name=context.registered_model_name,
            pip_requirements=_pip_requirements(),
        )
