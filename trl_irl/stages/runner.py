"""What every stage does around its training, in one place: the run folder held, a finished stage reused on resume
(its ``final/DONE`` marker), the config that shaped a stage recorded, file writes on the main process only, the
checkpoint a stage continues from, progress lines and timing."""

from __future__ import annotations

import contextlib
import shutil
import time

from accelerate.utils import broadcast_object_list
from transformers.integrations import WandbCallback

from ..checkpoints import select_checkpoint
from ..console import quiet_progress, stage_header
from ..models import base_model_name, model_card_callback
from ..plan import RunPlan
from ..run_folder import RunLock, check_resume, raise_if_terminated, stage_config, termination_check, write_stage_config
from ..tracking import stage_wandb
from ..validation import refusing


class StageRunner:
    """The run folder's bookkeeping for the stages of ``plan``; ``timings`` collects each stage's seconds."""

    def __init__(self, plan: RunPlan):
        self.plan = plan
        self.out = plan.out
        self.state = plan.state
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def holding_folder(self):
        """The run folder, held against other runs until the block ends (``run_folder.RunLock``), its stages checked
        again (a run may have taken it since start-up) and, for a resume, prepared (``prepare_folder``)."""
        with contextlib.ExitStack() as held:
            with refusing(RuntimeError):  # checked at start-up: this is for a run that took the folder meanwhile
                if self.state.is_main_process:
                    held.enter_context(RunLock(self.out))
                self.on_main(self.plan.check_stages)
            self.on_main(self.prepare_folder)
            yield

    def prepare_folder(self):
        """Once the run holds the folder (main process): a resume says what it continues, and with
        ``retrain_changed`` removes the stages trained under another config."""
        plan = self.plan
        if not plan.cfg["resume"]:
            return
        if not any((self.out / s).exists() for s in plan.stages()):
            print(
                f"resume=true: nothing to resume in {self.out} (no stage folders); starting from the beginning",
                flush=True,
            )
            return
        # check_stages refused a changed stage without retrain_changed, so what is changed here is to retrain
        for stage in check_resume(self.out, plan.stages(), plan.cfg, plan.algo, retrain_changed=True)[1]:
            print(f"resume: {stage} was trained under another config; retraining it (retrain_changed=true)", flush=True)
            shutil.rmtree(self.out / stage)

    def on_main(self, fn, *args):
        """``fn(*args)`` on the main process only (file writes); every process continues once it is done."""
        result = fn(*args) if self.state.is_main_process else None
        self.state.wait_for_everyone()
        return result

    def reuse_finished(self, stage: str) -> bool:
        """True when a resumed run finds ``stage`` finished by an earlier run: it says so (the stage's header would
        stand alone on the console) and the stage is reused, not trained."""
        final = self.plan.final_dir(stage)
        reused = self.plan.cfg["resume"] and (final / "DONE").exists()
        if reused and self.state.is_main_process:
            print(f"  {stage}: finished by an earlier run, reused ({final})", flush=True)
        return reused

    def begin(self, stage: str):
        """A stage starts training: its folder records the config that shapes it (``resume`` compares it)."""
        raise_if_terminated()
        self.on_main(write_stage_config, self.out / stage, stage_config(self.plan.cfg, stage, self.plan.algo))

    def mark_done(self, stage: str, save):
        """``save(final_dir)`` on the main process, then the DONE marker that ``resume`` looks for."""

        def write():
            save(self.plan.final_dir(stage))
            (self.plan.final_dir(stage) / "DONE").touch()

        self.on_main(write)

    def resume_checkpoint(self, stage: str) -> str | None:
        """The checkpoint ``stage`` continues from (torn ones set aside), the same on every process; None: start."""
        plan = self.plan
        if not plan.cfg["resume"]:
            return None
        requested = plan.resume_from if plan.resume_from and plan.resume_from[0] == stage else (None, None, None)

        def choose():
            chosen = select_checkpoint(self.out / stage, requested[1], label=requested[2])
            if chosen is not None:
                print(f"resume: {stage} continues from {chosen}", flush=True)
            return None if chosen is None else str(chosen)

        return broadcast_object_list([self.on_main(choose)])[0]

    @contextlib.contextmanager
    def timing(self, stage: str, header: bool = True):
        """The block's seconds in ``timings[stage]``; a header on the console unless the stage runs inside another's
        (reward pretraining inside the online-IRL arm: its lines name it)."""
        if header and self.state.is_main_process:
            stage_header(stage)
        start = time.perf_counter()
        yield
        self.timings[stage] = round(time.perf_counter() - start, 2)

    def progress(self, trainer, stage: str):
        """``trainer`` showing compact progress lines; its whole log events go to ``train.log`` (main process), and
        to wandb under the stage's own keys; the model cards it writes name the run's base model and the folder the
        trained model is saved in."""
        merged = self.plan.lora and stage not in ("bc", "reward_pretrain")  # a LoRA arm is also saved merged
        saved = self.out / stage.split(" ")[0] / ("merged" if merged else "final")
        trainer.add_callback(model_card_callback(base_model_name(self.plan.cfg["model"]), saved))
        trainer.add_callback(termination_check())
        if any(isinstance(c, WandbCallback) for c in trainer.callback_handler.callbacks):
            trainer.remove_callback(WandbCallback)
            trainer.add_callback(stage_wandb(stage.replace(" ", "_")))
        return quiet_progress(trainer, stage, self.out / "train.log" if self.state.is_main_process else None)
