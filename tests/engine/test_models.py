"""Model options applied at load: YaRN rope scaling (the paper's Qwen2.5 at 128K tokens) and the dtype, on the tiny
model; the tokenizer alone, without weights."""
from __future__ import annotations

import json

import pytest
import torch

from icrl_lib.engine.models import load_model, load_tokenizer, model_facts, resolve_model
from icrl_lib.errors import UserError
from icrl_lib.runs.identity import run_name
from icrl_lib.runs.loop import run_experiment
from icrl_lib.runs.plan import prepare
from tests.helpers import assert_one_line_error, cli, small


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


# Run names computed on main before the dtype field existed: a config that leaves dtype at auto keeps its folder.
NAMES_BEFORE_DTYPE = {
    "defaults": "banking77__smollm2-135m-instruct__random_unbiased_only_positive_p0.1__icrl__t1__seed100-100-100"
                "__0e34148e",
    "params/quickstart.yaml": "clinic150__smollm2-135m-instruct__approximate_only_positive_p0.5_uniform8__icrl__t1"
                              "__seed100-100-100__5cd9d6f7",
}


def test_dtype_auto_keeps_the_run_names_and_others_get_their_own(monkeypatch):
    from icrl_lib.paths import project_root
    from icrl_lib.runs.config import load_config

    monkeypatch.chdir(project_root())
    for source, name in NAMES_BEFORE_DTYPE.items():
        config = load_config(None if source == "defaults" else source)
        assert config.dtype == "auto" and "dtype" not in config.identity() and run_name(config) == name
        names = {run_name(load_config(None if source == "defaults" else source, dtype=d))
                 for d in ("float32", "bfloat16", "float16")}
        assert len(names) == 3 and name not in names  # a bf16 run never resumes an fp32 (or auto) run folder


@pytest.mark.parametrize("fields,needle", [
    ({"dtype": "bf16"}, "dtype: got 'bf16'; allowed: auto, float32, bfloat16, float16"),
    ({"dtype": "bfloat16", "backend": "llamacpp", "server_url": "http://h:1"}, "dtype: applies to the local backend"),
])
def test_bad_dtype_settings_name_the_field(tmp_path, fields, needle):
    with pytest.raises(UserError, match=needle):
        small(tmp_path, **fields)


def test_bad_dtype_is_one_line_on_the_command_line():
    assert_one_line_error(cli("run", "--dtype", "fp16"), "dtype", "auto, float32, bfloat16, float16")


@pytest.mark.tiny
def test_dtype_loads_the_model_in_that_type_and_meta_records_it(tiny, tmp_path):
    assert next(tiny.model.parameters()).dtype == torch.float32  # auto on the CPU
    half = load_model(tiny.name, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert half.kv_bytes_per_token == tiny.kv_bytes_per_token // 2
    with pytest.raises(UserError, match=r"dtype: the loaded model is float32, the config asks for bfloat16"):
        prepare(small(tmp_path, model_name=tiny.name, dtype="bfloat16"), tiny)
    with pytest.raises(UserError, match=r"dtype: the loaded model is bfloat16, the config asks for auto \(float32"):
        prepare(small(tmp_path, model_name=tiny.name), half)
    for dtype, lm, recorded in (("auto", tiny, "float32"), ("bfloat16", None, "bfloat16")):
        result = run_experiment(small(tmp_path, model_name=tiny.name, dtype=dtype, train_k=4, test_every=2),
                                progress=False, lm=lm)
        meta = json.loads((result.run_dir / "meta.json").read_text())
        assert meta["dtype"] == recorded and len(result.records) == 4


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
