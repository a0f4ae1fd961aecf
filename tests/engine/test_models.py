"""Model options applied at load: YaRN rope scaling (the paper's Qwen2.5 at 128K tokens), on the tiny model; the
tokenizer alone, without weights."""
from __future__ import annotations

import json

import pytest
import torch

from icrl_lib.engine.models import load_model, load_tokenizer, model_facts, resolve_model
from icrl_lib.errors import UserError
from icrl_lib.runs.identity import run_name
from icrl_lib.runs.loop import run_experiment
from icrl_lib.runs.plan import prepare
from tests.helpers import small


@pytest.mark.tiny
def test_yarn_scales_the_window_and_the_rope_of_the_loaded_model(tiny):
    facts = model_facts(tiny.name, resolve_model(tiny.name), yarn_factor=4.0)
    assert facts.context_window == 4 * tiny.context_window == 4 * 8192 and facts.yarn_factor == 4.0
    scaled = load_model(tiny.name, device="cpu", yarn_factor=4.0)
    config = scaled.model.config
    rope = getattr(config, "rope_parameters", None) or config.rope_scaling
    assert rope["rope_type"] == "yarn" and rope["factor"] == 4.0 and rope["original_max_position_embeddings"] == 8192
    ids = torch.tensor([list(range(5, 200))])
    with torch.inference_mode():
        plain, yarn = tiny.model(ids).logits, scaled.model(ids).logits
    assert not torch.allclose(plain, yarn, atol=1e-4)  # the rotary embedding changed, so the logits did


@pytest.mark.tiny
def test_yarn_is_part_of_a_runs_identity_and_record(tiny, tmp_path):
    plain, yarn = small(tmp_path, model_name=tiny.name), small(tmp_path, model_name=tiny.name, yarn_factor=4.0)
    assert run_name(plain) != run_name(yarn) and "yarn_factor" not in plain.identity()
    with pytest.raises(UserError, match="yarn_factor: the loaded model has None, the config asks for 4.0"):
        prepare(yarn, tiny)
    result = run_experiment(small(tmp_path, model_name=tiny.name, yarn_factor=4.0, train_k=4, test_every=2),
                            progress=False)
    meta = json.loads((result.run_dir / "meta.json").read_text())
    assert meta["model"]["yarn_factor"] == 4.0 and meta["model"]["context_window"] == 4 * 8192


@pytest.mark.parametrize("fields,needle", [
    ({"yarn_factor": 1.0}, "yarn_factor: must be > 1"),
    ({"yarn_factor": 4.0, "backend": "llamacpp", "server_url": "http://h:1"}, "yarn_factor: applies to the local"),
])
def test_bad_yarn_settings_name_the_field(tmp_path, fields, needle):
    with pytest.raises(ValueError, match=needle):
        small(tmp_path, **fields)


@pytest.mark.tiny
def test_the_tokenizer_alone_is_the_one_of_the_models_facts(tiny, tmp_path, monkeypatch):
    """load_tokenizer (no weights; no torch where the folder names a generic class) gives what model_facts gives:
    the same class, chat template and ids; the embedded model not yet converted gives its GGUF file's tokenizer,
    and nothing is converted."""
    messages = [{"role": "system", "content": "Route é tickets."}, {"role": "user", "content": "Ticket:  a\n b  "}]
    name = "smollm2-135m-instruct"
    for model in (tiny.name, name):
        source = resolve_model(model)
        light, full = load_tokenizer(model, source), model_facts(model, source).tokenizer
        assert type(light) is type(full) and light.chat_template == full.chat_template
        text = full.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + "Team:"
        assert light(text, add_special_tokens=False)["input_ids"] == full(text, add_special_tokens=False)["input_ids"]
    monkeypatch.setenv("ICRL_CACHE_DIR", str(tmp_path / "empty"))
    unconverted = load_tokenizer(name, resolve_model(name))
    assert unconverted(text, add_special_tokens=False)["input_ids"] == full(text, add_special_tokens=False)["input_ids"]
    assert not (tmp_path / "empty").exists()
