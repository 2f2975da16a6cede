"""model_profiles.yaml is validated at start-up; a bad file is refused naming the profile and field."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app.profiles import ProfileError, load_profiles
from app.settings import PROJECT_ROOT
from models import HANDLERS

GOOD = yaml.safe_load((PROJECT_ROOT / "model_profiles.yaml").read_text())


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_profiles_load_with_known_handlers() -> None:
    profiles = load_profiles(PROJECT_ROOT / "model_profiles.yaml", known_handlers=set(HANDLERS))
    assert {"tabular_regression", "tabular_classification", "llm_lora", "llm_chat"} <= set(profiles)
    for name, profile in profiles.items():
        assert profile.name == name
        if profile.trainer is not None:  # the seed's body sets these three for any trainable profile
            assert {"numEpoch", "learningRate", "numBatch"} <= set(profile.hyperparameters)
    assert profiles["llm_chat"].trainer is None and profiles["llm_lora"].inference is None


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda p: p["tabular_regression"]["trainer"].pop("image"), "tabular_regression.trainer.image"),
        (lambda p: p["tabular_regression"]["inference"].update(replicas=0), "tabular_regression.inference.replicas"),
        (lambda p: p["tabular_classification"].update(handler="nope"), "tabular_classification.handler"),
        (lambda p: p["tabular_regression"]["hyperparameters"]["numEpoch"].update(default=0),
         "tabular_regression.hyperparameters.numEpoch"),
        (lambda p: p["tabular_regression"].update(colour="blue"), "tabular_regression.colour"),
        (lambda p: p["tabular_regression"]["gpu"].update(count="many"), "tabular_regression.gpu.count"),
    ],
)
def test_bad_profile_names_the_profile_and_field(tmp_path: Path, mutate, words: str) -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    mutate(data["profiles"])
    with pytest.raises(ProfileError) as error:
        load_profiles(write(tmp_path, data), known_handlers=set(HANDLERS))
    assert words in str(error.value)


def test_unreadable_or_empty_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        load_profiles(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("profiles: [unclosed")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profiles(broken)
    with pytest.raises(ProfileError, match="at least one profile"):
        load_profiles(write(tmp_path, {"profiles": {}}))


def test_service_refuses_to_start_on_a_bad_profiles_file(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["profiles"]["tabular_regression"]["inference"]["port"] = 99999
    env = {"MLOPS_PROFILES_PATH": str(write(tmp_path, data)), "MLOPS_DATA_DIR": str(tmp_path / "data"),
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "app"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "tabular_regression.inference.port" in result.stderr
    assert not (tmp_path / "data").exists()  # nothing was started


def test_hyperparameters_resolve_over_defaults() -> None:
    profile = load_profiles(PROJECT_ROOT / "model_profiles.yaml")["tabular_regression"]
    resolved, problems = profile.resolve_hyperparameters({"numEpoch": 5, "learningRate": 1e-2})
    assert problems == []
    assert resolved["numEpoch"] == 5 and isinstance(resolved["numEpoch"], int)
    assert resolved["numBatch"] == profile.hyperparameters["numBatch"].default
    resolved, _ = profile.resolve_hyperparameters({"numEpoch": 5.0})
    assert resolved["numEpoch"] == 5 and isinstance(resolved["numEpoch"], int)
