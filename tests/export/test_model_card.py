"""The model card of an export (the Hub's README.md), and the push to the Hub: checked before anything is written or
trained, the export uploaded in one commit, a failed push leaving the export whole."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from amused_lightning.callbacks.final_export import FinalExport
from amused_lightning.commands.export import main as export_main
from amused_lightning.export.card import CARD_NAME, SAMPLES_NAME, CardFacts, metadata, schedule_text
from amused_lightning.export.hub import HubError, push_export
from amused_lightning.export.pipeline import export_files
from amused_lightning.model.components import load_components
from amused_lightning.run.checkpoint import FORMAT, MARK, RunCheckpoint

from helpers import fails_with, tiny_fit

RUN = {"precision": "bf16-mixed", "devices": 2, "accumulate_grad_batches": 3, "train_rows": 100, "lr": 2e-5,
       "weight_decay": 0.01, "ema_decay": None}
NOUNS = {"class_path": "amused_lightning.data.sources.HFDataset", "init_args": {"path": "m1guelpf/nouns"}}


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory):
    """A checkpoint of a full finetune of `tiny` as `fit` writes it (transformer weights moved), made without a fit."""
    path = tmp_path_factory.mktemp("full") / "step=7.ckpt"
    weights = {f"transformer.{k}": v.detach() + 0.01 for k, v in load_components("tiny").transformer.named_parameters()}
    torch.save({"hyper_parameters": {"pretrained": "tiny", "seed": 0, "lora": None, "batch_size": 2,
                                     "lr_schedule": {"name": "cosine", "warmup_steps": 5, "scale_lr": False}},
                "state_dict": weights, "global_step": 7,
                "datamodule_hyper_parameters": {"resolution": 64, "source": NOUNS},
                MARK: {"format": FORMAT, "optimizer": "bitsandbytes.optim.AdamW8bit",
                                  "run": RUN}}, path)
    return path


def read_card(folder) -> tuple[dict, str]:
    """The front matter (parsed with yaml) and the text of an export's card, which huggingface_hub must load."""
    text = (folder / CARD_NAME).read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert ModelCard.load(folder / CARD_NAME).data.to_dict() == meta
    return meta, text


def test_the_card_of_a_full_export(full_checkpoint, tmp_path):
    export_main([str(full_checkpoint), str(tmp_path)])
    meta, text = read_card(tmp_path)
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "text-to-image"
    assert "lora" not in meta["tags"] and {"text-to-image", "amused"} <= set(meta["tags"])
    assert "base_model" not in meta and meta["license"] == "other", "tiny is a preset, not a Hub model"
    assert meta["datasets"] == ["m1guelpf/nouns"]
    for fact in ("full finetuning of the transformer; text encoder frozen", "`HFDataset` `m1guelpf/nouns`, 100 "
                 "training rows, 64 px", "`bitsandbytes.optim.AdamW8bit`, learning rate 2e-05, weight decay 0.01, "
                 "cosine schedule, 5 warmup steps", "2 per device x 2 devices x 3 accumulation = 12",
                 "| steps | 7 optimizer steps |", "| precision | bf16-mixed |", "`tiny` preset: random weights"):
        assert fact in text, fact
    assert "load_lora_adapter" not in text and "No validation images" in text
    assert not (tmp_path / SAMPLES_NAME).exists()


def test_a_schedule_without_warmup_reports_none():
    assert schedule_text("constant", 500) == "constant schedule (no warmup)"
    assert schedule_text("constant_with_warmup", 500) == "constant_with_warmup schedule, 500 warmup steps"


def test_a_hub_base_model_is_linked_with_its_license(full_checkpoint):
    checkpoint = torch.load(full_checkpoint, weights_only=False)
    lora = {"r": 4, "alpha": 8.0, "target_modules": ["to_q"]}
    checkpoint["hyper_parameters"].update(pretrained="amused/amused-256", revision="main", lora=lora)
    meta = metadata(CardFacts.of(RunCheckpoint.of(checkpoint), "trained", False, "me/x"))
    assert meta["base_model"] == "amused/amused-256" and meta["license"] == "openrail++"
    assert meta["base_model_relation"] == "adapter" and "lora" in meta["tags"]
    merged = metadata(CardFacts.of(RunCheckpoint.of(checkpoint), "trained", True, "me/x"))
    assert merged["base_model_relation"] == "finetune" and "lora" not in merged["tags"]


@pytest.fixture
def online(monkeypatch, tmp_path):
    """The Hub reachable as far as the environment says, and no token anywhere unless a test gives one."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    # huggingface_hub caches one of the Hub's answers in HF_HOME: a fake Hub's answer must stay out of it.
    monkeypatch.setattr(huggingface_hub.constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent-harnesses.json"))


@pytest.mark.parametrize("environment, extra, refusal", [
    ({"HF_HUB_OFFLINE": "1"}, (), "--push-to-hub='me/x': HF_HUB_OFFLINE is set, so nothing can be pushed"),
    ({}, (), "--push-to-hub='me/x': no Hugging Face token; pass --hub-token, set HF_TOKEN"),
    ({"HF_TOKEN": "hf_x"}, (), "the Hugging Face Hub did not accept the token or could not be reached (ConnectError"),
    ({}, ("--hub-token", "hf_x"), "could not be reached (ConnectError"),
])
def test_a_push_that_cannot_work_is_refused_before_the_export(full_checkpoint, tmp_path, capsys, monkeypatch, online,
                                                              environment, extra, refusal):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    line = fails_with(capsys, "export", str(full_checkpoint), str(tmp_path / "out"), "--push-to-hub", "me/x", *extra)
    assert refusal in line, line
    assert not (tmp_path / "out").exists(), "nothing written"


def test_a_bad_repo_id_is_refused_when_the_config_is_read():
    with pytest.raises(ValueError, match="export.push_to_hub='a/b/c' is not a Hub repo id"):
        FinalExport(push_to_hub="a/b/c")
    with pytest.raises(ValueError, match="export.push_to_hub='me/x' is set but export.enabled is false"):
        FinalExport(enabled=False, push_to_hub="me/x")


def test_fit_checks_the_push_before_training(capsys, tmp_path, toy_dataset, monkeypatch, online):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = fails_with(capsys, *tiny_fit(tmp_path, toy_dataset, "--trainer.max_steps", "1",
                                        "--export.push_to_hub", "me/x"))
    assert "export.push_to_hub='me/x': HF_HUB_OFFLINE is set" in line, line
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "export").exists(), "no step trained"
    # Before the data is even opened (a large dataset's scan or cache build would come first otherwise).
    line = fails_with(capsys, *tiny_fit(tmp_path / "b", tmp_path / "no-data", "--export.push_to_hub", "me/x"))
    assert "HF_HUB_OFFLINE is set" in line, line


class FakeHub(BaseHTTPRequestHandler):
    """The few Hub endpoints a push uses; records each request. `fail_commits` answers commits with an error."""

    requests: list = []
    fail_commits = False

    def log_message(self, *args) -> None:
        pass

    def reply(self, body, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.requests.append((self.path, None))
        if "whoami" in self.path:
            return self.reply({"name": "me", "auth": {"accessToken": {"role": "write"}}})
        if "agent-harnesses" in self.path:  # asked by huggingface_hub before its first request
            return self.reply({"standardEnvVars": [], "harnesses": {}})
        self.reply([])  # the repo's files: none yet

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.requests.append((self.path, body))
        address = f"http://127.0.0.1:{self.server.server_port}"
        if self.path == "/api/repos/create":
            return self.reply({"url": f"{address}/me/{json.loads(body)['name']}"})
        if "/preupload/" in self.path:
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                     for f in json.loads(body)["files"]]
            return self.reply({"files": files})
        if "/commit/" in self.path and self.fail_commits:
            return self.reply({"error": "this token may not write to me/x"}, 403)
        self.reply({"commitUrl": f"{address}/me/x/commit/{'a' * 40}", "commitOid": "a" * 40, "errors": []})


@pytest.fixture
def fake_hub(monkeypatch, online):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    FakeHub.requests, FakeHub.fail_commits = [], False
    yield FakeHub
    server.shutdown()


def committed_files(requests) -> dict[str, str]:
    """path -> base64 content of the files in the one commit among `requests`."""
    commits = [body for path, body in requests if "/commit/" in path]
    assert len(commits) == 1, f"{len(commits)} commits"
    lines = [json.loads(line) for line in commits[0].decode().splitlines()]
    return {line["value"]["path"]: line["value"]["content"] for line in lines if line["key"] == "file"}


def test_the_export_is_pushed_whole_in_one_commit(full_checkpoint, tmp_path, fake_hub):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine, not the export's")
    export_main([str(full_checkpoint), str(out), "--push-to-hub", "me/x", "--hub-token", "hf_x"])
    create = next(json.loads(body) for path, body in fake_hub.requests if path == "/api/repos/create")
    assert create["visibility"] == "private" and create["name"] == "x"
    exported = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"notes.txt"}
    files = committed_files(fake_hub.requests)
    assert set(files) == exported and CARD_NAME in files and "model_index.json" in files
    assert '"me/x"' in (out / CARD_NAME).read_text(), "the card's code loads the pushed repo"


def test_a_failed_push_leaves_the_export_whole(full_checkpoint, tmp_path, fake_hub):
    export_main([str(full_checkpoint), str(tmp_path)])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    fake_hub.fail_commits = True
    with pytest.raises(HubError, match=f"the export in {tmp_path} is complete: upload it with `hf upload me/x"):
        push_export(tmp_path, export_files(tmp_path), "me/x", False, "hf_x")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    create = next(json.loads(body) for path, body in fake_hub.requests if path == "/api/repos/create")
    assert create["visibility"] == "public"
