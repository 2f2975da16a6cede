"""A tiny causal language model made on the spot: random weights, a BPE tokenizer trained on a few
sentences, a chat template. Nothing is downloaded; it is small enough to train and serve on a CPU.
Also: a profiles file whose llm_chat starts vLLM quickly on a small machine."""

import json
import shutil
from pathlib import Path

import yaml

from app.settings import PROJECT_ROOT

SENTENCES = [
    "hello world how are you today",
    "the quick brown fox jumps over the lazy dog",
    "what is the capital of france paris is the capital",
    "machine learning models are trained on data",
    "kubernetes runs containers in pods on nodes",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def make_tiny_model(directory: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(SENTENCES * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    # Two heads of 64: vLLM's CPU attention kernels refuse smaller head sizes (16, for one). 4096
    # positions leave room for a generation long enough to break in the middle.
    config = LlamaConfig(vocab_size=len(fast), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    directory.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def write_prompt_completion_jsonl(path: Path, rows: int = 40) -> Path:
    with path.open("w") as file:
        for i in range(rows):
            sentence = SENTENCES[i % len(SENTENCES)]
            head, _, tail = sentence.partition(" ")
            file.write(json.dumps({"prompt": head, "completion": " " + tail}) + "\n")
    return path


def write_chat_jsonl(path: Path, rows: int = 40) -> Path:
    with path.open("w") as file:
        for i in range(rows):
            sentence = SENTENCES[i % len(SENTENCES)]
            file.write(json.dumps({"messages": [{"role": "user", "content": sentence.split()[0]},
                                                {"role": "assistant", "content": sentence}]}) + "\n")
    return path


def make_unloadable_model(source: Path, directory: Path) -> Path:
    """The tiny model under an architecture no engine knows: vLLM refuses to load it."""
    shutil.copytree(source, directory)
    config = json.loads((directory / "config.json").read_text())
    config["architectures"] = ["MysteryForCausalLM"]
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# llm_chat's vLLM settings for tests: no torch.compile (the server is up in seconds, not a minute),
# a KV cache of 64 MiB rather than gigabytes, float32 so that its numbers match transformers'.
TEST_VLLM = {"enforce_eager": True, "cpu_kv_cache_memory": "64MiB", "dtype": "float32", "max_model_len": 4096,
             "max_num_seqs": 8}


def write_test_profiles(path: Path, max_new_tokens: int = 4000) -> Path:
    """The project's profiles with llm_chat's vLLM sized for a small, busy test machine."""
    profiles = yaml.safe_load((PROJECT_ROOT / "model_profiles.yaml").read_text())
    llm = profiles["profiles"]["llm_chat"]["llm"]
    llm["vllm"] = {**llm["vllm"], **TEST_VLLM}
    llm["max_new_tokens"] = max_new_tokens
    path.write_text(yaml.safe_dump(profiles))
    return path
