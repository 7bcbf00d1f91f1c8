"""DiCMoR, Distribution-Consistent Modal Recovering (Wang, Cui, Li, ICCV 2023), regression.

Architecture (the paper and the official mdswyz/DiCMoR `trains/singleTask/model/dicmor.py`,
`glow.py`, `rcan.py`; MOSI config d = 32, 8 heads, 4 levels, kernels 5):
- Conv1d projections (kernel 5, no bias) of the three modalities to width d.
- Per modality a flow (`baselines.flows.Glow`, 32 affine-coupling steps, hidden 64) maps the
  projected features to a latent; seven class-conditional diagonal Gaussian priors (classes
  `round(y)` in -3..3, zero-initialised learned mean and log-sd) score the latents of all
  three modalities. The flow loss is the official bits-per-dimension
  max(0, -(log p(z | class) + log|det|) / (log 2 * n)) per modality.
- Recovery: a missing modality m is the inverse of m's flow applied to an available modality's
  latent (class-consistent latents make that a sample of m given the class); with two
  available modalities the two recoveries go through a 1x1 conv (`cat_m`); then RCAN
  refinement (1x1 conv to 2d, 20 residual channel-attention blocks, 1x1 conv back) and a
  reconstruction MSE against the real projection (the reverse pass is detached, as official).
- MulT backbone on the (recovered) sequences: six crossmodal and three memory transformers,
  last steps concatenated (6d), MulT's residual head, one regression output.
- Objective: L1 + 0.1 (NLL_text + NLL_audio + NLL_vision + reconstruction MSE); Adam lr 1e-4,
  micro-batches of 4 accumulated 8 times per step, gradient value clipping 0.6;
  ReduceLROnPlateau(0.5, 5) on the validation loss (`plateau_factor`,
  `plateau_patience`, through `BenchModel.configure_scheduler`) and validation-loss selection.

Deliberate differences from the official code, and why:
- The missing pattern is the harness's masks, never the official per-batch lookup table
  (which treats rate 0.0 as two modalities missing and raises at rates >= 0.8). Recovery is
  per time step (the data are aligned): a projected step of m counts as missing when the
  input step at its window centre was dropped; it is replaced by the recovery from the
  modalities available at that step (both -> `cat_m`, one -> that one, none -> left as is).
  Under `smm`/`rmm` this is exactly the official whole-modality recovery.
- Two stages in the harness (`start_epoch`): the official starts from pretrained weights it
  downloads and has no pretraining script. The first `complete_fraction` of the epoch budget
  trains everything on complete data (L1 + flow NLL, no recovery); the rest is the official
  missing-data stage, with the projections frozen (the official runs them under `no_grad`)
  and recovery trained on the corrupted batch against the clean projection. The boundary is
  recorded in the hparams (`complete_epochs`, `epochs_budget`). The complete-data stage is
  the trainer's warm-up (`selection_start`): a fixed learning rate, ending on its best
  complete-data validation epoch, and kept once per (data, seed, budget), so every missing
  rate's run starts from the same pretrained weights, as the official runs all start from one
  download; the plateau schedule, patience and the run's selection belong to the
  missing-data stage, with a fresh optimiser.
- Flows see detached projections (as official: no flow gradient reaches the projections);
  NLL and losses average over valid steps only; key-padding masks as in `baselines.mult`.
- `flow_mode="coupling"` (default) runs only the couplings, as the official `Flow.forward`;
  `"glow"` also runs ActNorm and the invertible channel mixing.
- Text is the suite's fixed token features (the official runs BERT under `no_grad`).

Parameters (MOSI aligned shapes, dims (768, 5, 20), no text encoder): 3,524,817, exactly the
official model built from its MOSI config. It includes modules the official forward never
uses, built for parity: each flow step's ActNorm and invertible 1x1 conv (33,792 per
modality in coupling mode), each flow's own prior head (2,176) and `weight_l/v/a`
(3 x 4,160). Table VI of the CIDer paper gives 3,534,129: 9,312 more, the size of one
Linear(96, 96), which no module of the official code has.

Aligned data only: recovery maps a latent of one modality into another's flow, so all
three need the same (d, L). The class declares `variants = ("aligned",)`, so `run`, `grid`,
`complexity` and `tune` refuse `--variant unaligned` before loading any data; the build-time
check below stays for a `--dataset FILE.pkl` whose shapes disagree with its `--variant`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from baselines.flows import Glow, ZeroLinear, gaussian_log_p
from baselines.mult import (
    MODALITIES,
    MULT_MOSI_BLOCK,
    MulTFusion,
    ResidualHead,
    TemporalProjection,
)
from mer_bench.data.batch import Batch
from mer_bench.errors import UserError
from mer_bench.models import BenchModel, ModelOutput, register_model
from mer_bench.training.steps import slice_batch

N_PRIORS = 7  # sentiment classes round(y) in -3..3


class ChannelAttention(nn.Module):
    """RCAN's channel attention: x * sigmoid(W2 relu(W1 mean_t(x)))."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(channels, channels // reduction, 1), nn.ReLU(),
            nn.Conv1d(channels // reduction, channels, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.net(x.mean(dim=-1, keepdim=True))


class RCAB(nn.Module):
    """Residual channel-attention block: x + CA(conv3(relu(conv3(x))))."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=1), ChannelAttention(channels, reduction),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Refiner(nn.Module):
    """RCAN refinement of a recovered (B, T, d) sequence: 1x1 up to 2d, a residual group of
    RCABs closed by a conv3, 1x1 back to d."""

    def __init__(self, d: int, blocks: int, reduction: int) -> None:
        super().__init__()
        self.up = nn.Conv1d(d, 2 * d, 1)
        self.group = nn.Sequential(
            *(RCAB(2 * d, reduction) for _ in range(blocks)), nn.Conv1d(2 * d, 2 * d, 3, padding=1)
        )
        self.down = nn.Conv1d(2 * d, d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x.transpose(1, 2))
        return self.down(h + self.group(h)).transpose(1, 2)


def masked_mean_sq(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the (B, T) positions `where` of (B, T, D) tensors."""
    w = where.to(a.dtype).unsqueeze(-1)
    return ((a - b).pow(2) * w).sum() / (w.sum() * a.shape[-1]).clamp_min(1.0)


@register_model(
    "dicmor",
    "DiCMoR flow-based modal recovery (Wang et al. ICCV 2023), regression, trained one-to-one",
)
class DiCMoR(BenchModel):
    """DiCMoR: class-conditional normalizing flows recover missing modalities for MulT."""

    output = "regression"
    training = "one-to-one"
    # refused up front on any other variant (`validate.check_model_variant`): recovery inverts
    # one modality's latent through another's flow, so all three need equal lengths
    variants = ("aligned",)
    paper = (
        "Wang, Cui, Li. Distribution-Consistent Modal Recovering for Incomplete Multimodal "
        "Learning. ICCV 2023"
    )
    # mdswyz/DiCMoR config/config.json "dicmor" -> datasetParams.mosi (attn_mask true,
    # update_epochs 8, early_stop 10); flow and RCAN sizes from model/dicmor.py.
    defaults = {
        **MULT_MOSI_BLOCK,
        "plateau_factor": 0.5,  # official ReduceLROnPlateau on the validation loss
        "plateau_patience": 5,
        "d_model": 32,
        "num_heads": 8,
        "layers": 4,
        "mem_layers": 3,
        "micro_batch": 4,
        "n_flow": 32,
        "flow_hidden": 64,
        "flow_mode": "coupling",
        "rcan_blocks": 20,
        "rcan_reduction": 16,
        "w_aux": 0.1,
        "complete_fraction": 0.5,
    }
    lr = 1e-4  # official MOSI learning_rate
    batch_size = 32  # 8 accumulated micro-batches of 4 per step (update_epochs)
    patience = 10  # official early_stop

    def __init__(self, spec, task, **hp) -> None:
        super().__init__(spec, task, **hp)
        h = self.hparams
        if not spec.aligned or len(set(spec.lens)) != 1:
            raise UserError(
                "dicmor needs aligned data (equal sequence lengths across modalities): "
                "use --variant aligned"
            )
        d = h["d_model"]
        kernels = (h["kernel_text"], h["kernel_audio"], h["kernel_vision"])
        self.proj = nn.ModuleDict(
            {m: TemporalProjection(spec.dims[i], d, kernels[i], spec.lens[i], m)
             for i, m in enumerate(MODALITIES)}
        )
        if len({self.proj[m].out_len for m in MODALITIES}) != 1:
            raise UserError("dicmor needs equal projected lengths: use equal conv kernels")
        self.flow = nn.ModuleDict(
            {m: Glow(d, h["n_flow"], h["flow_hidden"], h["flow_mode"]) for m in MODALITIES}
        )
        self.priors = nn.ModuleList(ZeroLinear(d, 2 * d) for _ in range(N_PRIORS))
        self.refine = nn.ModuleDict(
            {m: Refiner(d, h["rcan_blocks"], h["rcan_reduction"]) for m in MODALITIES}
        )
        self.merge = nn.ModuleDict({m: nn.Conv1d(2 * d, d, 1) for m in MODALITIES})
        self.fusion = MulTFusion.from_hparams(d, h)
        # Built for parameter parity with the official model; never used (see docstring).
        self.weight = nn.ModuleDict({m: nn.Linear(2 * d, 2 * d) for m in MODALITIES})
        self.head = ResidualHead(6 * d, 1, h["output_dropout"])
        self.joint_dim = 6 * d  # read by wrappers such as MACI
        self.stage = "missing"

    # --- stages ------------------------------------------------------------------------
    def selection_start(self, epochs: int) -> int:
        """The missing-data stage is the run: the complete-data stage before it is the
        harness's warm-up (its pretraining), shared by every run of its seed."""
        return int(self.hparams["complete_fraction"] * epochs)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Complete-data stage before `selection_start`, then the missing-data stage; the
        boundary is recorded in the hparams."""
        super().start_epoch(epoch, epochs)
        n_complete = self.selection_start(epochs)
        self.hparams["complete_epochs"] = n_complete
        self.hparams["epochs_budget"] = epochs
        self.stage = "complete" if epoch < n_complete else "missing"

    # --- forward -----------------------------------------------------------------------
    def _project(self, batch: Batch, frozen: bool) -> dict[str, tuple[torch.Tensor, ...]]:
        """Per modality (projection, valid steps, dropped steps) on the projected grid."""
        raw = {
            "text": F.dropout(batch.text, self.hparams["text_dropout"], self.training),
            "audio": batch.audio,
            "vision": batch.vision,
        }
        out = {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            for m in MODALITIES:
                x, v = self.proj[m](raw[m], getattr(batch, f"valid_{m}"))
                c = self.proj[m].kernel // 2
                miss = getattr(batch, f"missing_{m}")[:, c : c + x.shape[1]]
                out[m] = (x, v, miss & v)
        return out

    def _recover(self, proj: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Replace dropped steps by flow recovery + RCAN; returns (sequences, where replaced).
        The flow passes are detached (as official): the flows learn from their NLL only."""
        avail = {m: proj[m][1] & ~proj[m][2] for m in MODALITIES}
        z: dict[str, torch.Tensor] = {}

        def latent(m: str) -> torch.Tensor:
            if m not in z:
                with torch.no_grad():
                    z[m] = self.flow[m](proj[m][0])[0]
            return z[m]

        seqs, replaced = {}, {}
        for m in MODALITIES:
            x, _, miss = proj[m]
            o1, o2 = (o for o in MODALITIES if o != m)
            a1, a2 = avail[o1], avail[o2]
            need = miss & (a1 | a2)
            replaced[m] = need
            if not bool(need.any()):
                seqs[m] = x
                continue
            with torch.no_grad():
                r1, r2 = self.flow[m].reverse(latent(o1)), self.flow[m].reverse(latent(o2))
            both = self.merge[m](torch.cat([r1, r2], -1).transpose(1, 2)).transpose(1, 2)
            src = torch.where(
                (a1 & a2)[..., None], both, torch.where(a1[..., None], r1, r2 * a2[..., None])
            )
            seqs[m] = torch.where(need[..., None], self.refine[m](src), x)
        return seqs, replaced

    def _predict(self, proj: dict, recover: bool) -> ModelOutput:
        if recover:
            seqs, replaced = self._recover(proj)
        else:
            seqs = {m: proj[m][0] for m in MODALITIES}
            replaced = {m: torch.zeros_like(proj[m][2]) for m in MODALITIES}
        last = self.fusion(seqs, {m: proj[m][1] for m in MODALITIES})
        joint, score = self.head(torch.cat([last[m] for m in MODALITIES], dim=-1))
        extras = {"seqs": seqs, "replaced": replaced, "proj": proj}
        return ModelOutput(scores=score.squeeze(-1), joint=joint, extras=extras)

    def forward(self, batch: Batch) -> ModelOutput:
        complete = self.training and self.stage == "complete"
        frozen = self.training and self.stage == "missing"
        return self._predict(self._project(batch, frozen), recover=not complete)

    # --- losses ------------------------------------------------------------------------
    def flow_nll(self, proj: dict, y: torch.Tensor) -> torch.Tensor:
        """Sum over modalities of the official bits-per-dimension NLL (clamped at 0) of the
        detached projections under the class-conditional priors."""
        cls = torch.round(y).clamp(-3, 3).long() + 3
        zeros = y.new_zeros(len(y), self.hparams["d_model"])
        stats = torch.stack([p(zeros) for p in self.priors], dim=0)  # (7, B, 2d)
        mean, log_sd = stats[cls, torch.arange(len(y))].chunk(2, dim=-1)
        total = y.new_zeros(())
        for m in MODALITIES:
            x, v, _ = proj[m]
            z, logdet = self.flow[m](x.detach())
            log_p = gaussian_log_p(z, mean[:, None], log_sd[:, None]).sum(-1) + logdet
            w = v.to(log_p.dtype)
            n = (w.sum() * x.shape[-1]).clamp_min(1.0)
            total = total + (-(log_p * w).sum() / (n * torch.log(torch.tensor(2.0)))).clamp_min(0)
        return total

    def losses(self, clean: Batch, corrupted: Batch) -> dict[str, torch.Tensor]:
        """L1 on the stage's batch, 0.1 (flow NLL on clean data + recovery MSE)."""
        if self.stage == "complete":
            out = self(clean)
            return {"task": self.task_loss(out, clean),
                    "aux": self.hparams["w_aux"] * self.flow_nll(out.extras["proj"], clean.y_reg)}
        out = self(corrupted)
        with torch.no_grad():
            target = self._project(clean, frozen=True)
        rec = sum(
            masked_mean_sq(out.extras["seqs"][m], target[m][0], out.extras["replaced"][m])
            for m in MODALITIES
        )
        nll = self.flow_nll(target, clean.y_reg)
        return {"task": self.task_loss(out, corrupted), "aux": self.hparams["w_aux"] * (nll + rec)}

    def objective(self, batch: Batch, out: ModelOutput) -> dict[str, torch.Tensor]:
        """For wrappers: the task loss and 0.1 x the flow NLL of the batch's projections."""
        nll = self.flow_nll(out.extras["proj"], batch.y_reg)
        return {"task": self.task_loss(out, batch), "aux": self.hparams["w_aux"] * nll}

    def step_options(self) -> dict[str, float]:
        return {"micro_batch": self.hparams["micro_batch"], "clip_value": self.hparams["grad_clip"]}

    def train_step(self, clean: Batch, corrupted: Batch, optimizer: torch.optim.Optimizer) -> dict:
        """The official accumulated step over micro-batches, on paired clean/corrupted rows."""
        optimizer.zero_grad(set_to_none=True)
        params = [p for p in self.parameters() if p.requires_grad]
        n, size = len(clean), max(1, int(self.hparams["micro_batch"]))
        logs: dict[str, float] = {}
        for start in range(0, n, size):
            stop = min(n, start + size)
            terms = self.losses(slice_batch(clean, start, stop), slice_batch(corrupted, start, stop))
            sum(terms.values()).backward()
            nn.utils.clip_grad_value_(params, self.hparams["grad_clip"])
            for k, v in terms.items():
                logs[k] = logs.get(k, 0.0) + float(v.detach()) * (stop - start) / n
        optimizer.step()
        return logs


@register_model(
    "dicmor_all",
    "DiCMoR (Wang et al. ICCV 2023) trained one-to-all (one model for every rate); otherwise as dicmor",
)
class DiCMoRAll(DiCMoR):
    """DiCMoR trained once for all missing rates (its paper trains one model per rate)."""

    training = "one-to-all"
