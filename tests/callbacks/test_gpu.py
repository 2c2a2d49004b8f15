"""CUDA-only paths: frozen parts leaving the device and visiting it for validation sampling, fp16 with a GradScaler,
the benchmark's GPU row, the host-memory optimizers against their on-device references.
Run with `pytest -m gpu` on a machine with a CUDA device; elsewhere they are skipped."""

import bitsandbytes
import pytest
import torch

from amused_lightning.callbacks.placement import FrozenPlacement
from amused_lightning.training.offload import OffloadedAdamW, OffloadedAdamW8bit

from helpers import fit, train_two_layer_net, two_layer_net

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_fp16_lora_run_offloads_frozen_parts_and_validates(tmp_path, toy_dataset):
    cli = fit(tmp_path, toy_dataset, "--trainer.accelerator", "gpu", "--trainer.precision", "16-mixed",
              "--trainer.max_steps", "3", "--model.lora.r", "4", "--model.objective.cond_dropout_prob", "0.5",
              "--validation_steps", "2", "--model.validation.prompts", '["a pixel art character"]')
    module = cli.model
    placement = next(c for c in cli.trainer.callbacks if isinstance(c, FrozenPlacement))
    assert placement.cast_tensors > 0 and cli.trainer.global_step == 3
    assert module.model.transformer.transformer_layers[0].attn1.to_q.base_layer.weight.dtype == torch.float16
    assert module.model.vqvae.encoder.conv_in.weight.dtype == torch.float32
    assert (tmp_path / "validation" / "step=000002.png").is_file()


def test_frozen_parts_are_off_the_device_during_steps(tmp_path, toy_dataset):
    import lightning as L

    from amused_lightning.data import AmusedDataModule, HFDataset
    from amused_lightning.training.module import AmusedModule

    seen = []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append((pl_module.model.vqvae.encoder.conv_in.weight.device.type,
                         pl_module.model.text_encoder.text_model.embeddings.token_embedding.weight.device.type))

    module = AmusedModule("tiny")
    datamodule = AmusedDataModule(HFDataset(str(toy_dataset)), resolution=32, batch_size=4, cache_dir=str(tmp_path))
    datamodule.connect(module.model.frozen_encoders())
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="16-mixed", max_steps=2, logger=False,
                        enable_checkpointing=False, limit_val_batches=0, enable_progress_bar=False,
                        callbacks=[FrozenPlacement(), Probe()])
    trainer.fit(module, datamodule=datamodule)
    assert type(datamodule.train_dataset).__name__ == "CachedDataset"
    assert seen == [("cpu", "cpu"), ("cpu", "cpu")]


def test_benchmark_gpu_row_reports_memory_and_mfu():
    from benchmark import Row, run_row

    row = Row("tiny-gpu", "tiny", 64, "lora", 2, 2, None, precision="16-mixed")
    result = run_row(row, steps=2, warmup=1, pre_encoded=True, accelerator="gpu")
    assert 0 < result["allocated_gb"] <= result["reserved_gb"]
    assert result["validation_gb"] > 0 and result["samples_per_s"] > 0


def test_a_state_from_the_loop_resumes_into_the_fused_cuda_step():
    from amused_lightning.training.optim import group_settings, reapply_settings, with_fused_step

    weight = torch.nn.Parameter(torch.ones(3, device="cuda"))
    looped = torch.optim.AdamW([weight], lr=0.1, foreach=False)
    weight.grad = torch.ones_like(weight)
    looped.step()
    saved = looped.state_dict()
    saved["param_groups"][0]["foreach"] = None  # as the default AdamW of an earlier version saved it
    fused = with_fused_step(torch.optim.AdamW([weight], lr=0.1))
    configured = group_settings(fused)
    fused.load_state_dict(saved)
    reapply_settings(fused, torch.optim.lr_scheduler.LambdaLR(fused, lambda step: 1.0), configured)
    fused.step()  # the fused kernel refuses step counts left on the CPU
    assert fused.state[weight]["step"].item() == 2


@pytest.mark.parametrize("reference_class, offloaded_class", [(torch.optim.AdamW, OffloadedAdamW),
                                                              (bitsandbytes.optim.AdamW8bit, OffloadedAdamW8bit)])
def test_offloaded_optimizers_move_cuda_weights_as_their_on_device_reference(reference_class, offloaded_class):
    def flat(net):
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    reference_net, _ = train_two_layer_net(reference_class, width=1500, device="cuda")
    offloaded_net, _ = train_two_layer_net(offloaded_class, width=1500, device="cuda")
    assert all(p.device.type == "cuda" for p in offloaded_net.parameters())
    initial, reference, offloaded = flat(two_layer_net(1500, "cuda")), flat(reference_net), flat(offloaded_net)
    # The host runs the CPU kernels: equal arithmetic, not necessarily equal rounding.
    assert (offloaded - reference).norm() <= 0.02 * (reference - initial).norm()
