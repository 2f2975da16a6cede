"""A tiny causal language model made on the spot: random weights, a BPE tokenizer trained on a few
sentences, a chat template. Nothing is downloaded; it is small enough to train and serve on a CPU."""

import json
from pathlib import Path

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
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
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
