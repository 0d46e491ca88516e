"""Configuration errors Lightning (or torch) raises while the Trainer, its callbacks, the optimizer and the
loaders are built, turned into our one-line form with the option's name: the one place that maps them.
And the Trainer options Lightning accepts although they can only do harm (checked before it is built)."""

from __future__ import annotations

import inspect
import os
import re
import sys
from typing import Any, Optional

from lit_lora.settings import check_number

# Option group -> the Lightning class whose __init__ declares its options.
_GROUPS = {
    "trainer": ("lightning.pytorch.trainer.trainer", "Trainer"),
    "checkpoint": ("lightning.pytorch.callbacks.model_checkpoint", "ModelCheckpoint"),
    "early_stopping": ("lightning.pytorch.callbacks.early_stopping", "EarlyStopping"),
    "lr_monitor": ("lightning.pytorch.callbacks.lr_monitor", "LearningRateMonitor"),
}


# Where Lightning checks the Trainer's and its callbacks' options, raising plain ValueError or TypeError as
# often as MisconfigurationException (the fit loop checks val_check_interval against the batches only once the
# loader exists).
_CHECKING_PACKAGES = ("trainer", "loops", "callbacks", "loggers")


def is_configuration_error(err: BaseException) -> bool:
    """Lightning rejected an option: a MisconfigurationException, or a ValueError or TypeError raised by
    Lightning's own trainer, loop, callback or logger code whose message names one of the options."""
    exceptions = sys.modules.get("lightning.fabric.utilities.exceptions")
    if exceptions is not None and isinstance(err, exceptions.MisconfigurationException):
        return True
    if not isinstance(err, (ValueError, TypeError)) or not _raised_by_lightning(err):
        return False
    return _named_option(" ".join(str(err).split())) is not None


def _raised_by_lightning(err: BaseException) -> bool:
    """The innermost frame of the traceback (where `raise` ran) is in Lightning's option-checking code."""
    package = sys.modules.get("lightning.pytorch")
    tb = err.__traceback__
    if package is None or tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    root = os.path.dirname(os.path.abspath(package.__file__))
    raised_in = os.path.abspath(tb.tb_frame.f_code.co_filename)
    return any(raised_in.startswith(os.path.join(root, sub) + os.sep) for sub in _CHECKING_PACKAGES)


def option_message(err: BaseException) -> str:
    """The error's message, led by the option it names (`trainer.max_steps: ...`) when one can be found."""
    message = " ".join(str(err).split())
    option = _named_option(message)
    return f"{option}: {message}" if option else message


def _named_option(message: str) -> Optional[str]:
    names = re.findall(r"`(\w+)`|\b(\w+)=|value \S+ for (\w+)", message)
    for name in (n for group in names for n in group if n):
        for group, (module, cls) in _GROUPS.items():
            owner = getattr(sys.modules.get(module), cls, None)
            if owner is not None and name in inspect.signature(owner.__init__).parameters:
                return f"{group}.{name}"
    return None


def check_trainer_options(trainer_cfg: Any) -> None:
    """What Lightning 2.6 takes without a word and then fails on (or silently misuses)."""
    clip = trainer_cfg.get("gradient_clip_val")
    if clip is not None:  # a negative norm is accepted and clips every gradient to nothing
        check_number("trainer.gradient_clip_val", clip, at_least=0)
    accumulate = trainer_cfg.get("accumulate_grad_batches")
    if accumulate is not None:  # 0 is accepted, then divides by zero mid-run
        check_number("trainer.accumulate_grad_batches", accumulate, at_least=1, integer=True)
    interval = trainer_cfg.get("val_check_interval")
    if interval is not None:  # 0 is accepted, then raises deep inside the fit loop
        check_number("trainer.val_check_interval", interval, above=0)
    every = trainer_cfg.get("log_every_n_steps")
    if every is not None:
        check_number("trainer.log_every_n_steps", every, at_least=1, integer=True)
