"""Models saved and rebuilt: a checkpoint holds the model's registry name and config
(``dataclasses.asdict(model.config)``) beside its weights, so `load_model` rebuilds it without
any other argument. `model_config` sizes a registered model for a registered data set (the
fields a config declares data-driven: ``from_dataset``)."""

import dataclasses
from typing import Any, Dict, Tuple

from fastar import data, models
from fastar._io import CorruptFileError, atomic_save, checked_load


class SettingsError(ValueError):
    """Settings that cannot make a run: raised before any data is read or file written."""


class RunError(RuntimeError):
    """A run that must stop: the loss is no longer finite, OUT is in use, a file is damaged."""


def data_fields(config_class) -> Tuple[str, ...]:
    """The config fields a data set decides (its shape, its values per dimension): the
    config's ``from_dataset``."""
    return tuple(config_class.from_dataset)


def model_config(name: str, dataset: str, model_args: Dict[str, Any],
                 conditional: bool = False):
    """The config of a registered model sized for a registered data set (its shape, values
    and, when conditional, classes), model_args overriding the other defaults. Raises
    SettingsError naming the problem (unknown model or keyword, with the accepted ones)."""
    if name not in models.MODELS:
        raise SettingsError("unknown model %r; available: %s" % (name, ", ".join(sorted(
            models.MODELS))))
    try:
        cls, entry = models.MODELS[name], data.get(dataset)
    except ValueError as e:
        raise SettingsError(str(e)) from None
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    from_dataset = data_fields(cls.config_class)
    accepted = ", ".join(sorted(fields - set(from_dataset))) or "none (the data set sets %s)" % (
        " and ".join(from_dataset))
    unknown = sorted(set(model_args) - fields)
    if unknown:
        raise SettingsError("%s: unknown keyword%s %s in the model arguments; accepted: %s" % (
            name, "s" if len(unknown) > 1 else "", ", ".join(unknown), accepted))
    decided = sorted(set(model_args) & set(from_dataset))
    if decided:
        raise SettingsError("%s: %s come%s from the data set (%s), not the model arguments"
                            % (name, " and ".join(decided), "" if len(decided) > 1 else "s",
                               dataset))
    if "num_classes" in model_args and not conditional:
        raise SettingsError("%s: num_classes in the model arguments trains a class-conditional "
                            "model: pass --conditional (which sets it from the data set)" % name)
    if model_args.get("cond_channels") is not None:
        raise SettingsError("%s: cond_channels needs a condition vector per example, which the "
                            "data sets do not have (class labels: --conditional)" % name)
    if model_args.get("local_channels") is not None:
        raise SettingsError("%s: local_channels needs a condition series per example (e.g. mel "
                            "frames), which the data sets do not have" % name)
    kwargs = dict(model_args)
    given = {"image_shape": entry.shape, "num_values": entry.num_values}  # what a data set sets
    kwargs.update((f, given[f]) for f in from_dataset)
    if conditional:
        if "num_classes" not in fields:
            raise SettingsError("%s is not class-conditional" % name)
        if entry.num_classes is None:
            raise SettingsError("%s has no labels to condition on" % dataset)
        kwargs.setdefault("num_classes", entry.num_classes)
    try:
        return cls.config_class(**kwargs)
    except (TypeError, ValueError) as e:
        raise SettingsError("%s: bad model arguments (%s); accepted: %s" % (name, e, accepted))


def build_model(name: str, dataset: str, model_args: Dict[str, Any],
                conditional: bool = False) -> models.AutoregressiveModel:
    """A registered model built from `model_config`; SettingsError for arguments it rejects."""
    config = model_config(name, dataset, model_args, conditional)
    try:
        return models.MODELS[name](config)
    except Exception as e:  # whatever a constructor raises on values it cannot use
        raise SettingsError("%s: bad model arguments %s (%s: %s)"
                            % (name, model_args, type(e).__name__, e)) from None


def load_model(path: str, device="cpu") -> Tuple[models.AutoregressiveModel, Dict[str, Any]]:
    """(model with the checkpoint's weights, the checkpoint) from a checkpoint or best.pt;
    RunError naming the file if it is damaged."""
    try:
        state = checked_load(path, "restore a good copy or train again", map_location=device)
        if "config" not in state:  # written before configs were saved: rebuild one
            state["config"] = dataclasses.asdict(model_config(
                state["model_name"], state["dataset"], state["model_args"],
                conditional="num_classes" in state["model_args"]))
        model = models.MODELS[state["model_name"]](**state["config"]).to(device)
        model.load_state_dict(state["model"])
    except (CorruptFileError, KeyError, RuntimeError, SettingsError) as e:
        raise RunError("%s cannot be loaded: %s" % (path, e)) from None
    return model, state


def describe(model: models.AutoregressiveModel, name: str = None) -> Dict[str, Any]:
    """What a checkpoint records of a model besides its weights: its registry name and
    config."""
    if name is None:
        name = next(k for k, cls in models.MODELS.items() if type(model) is cls)
    return {"model_name": name, "config": dataclasses.asdict(model.config)}


def save(model: models.AutoregressiveModel, path: str, **extra) -> None:
    """Writes model (weights, name, config) and extra entries to path, atomically."""
    atomic_save({"model": model.state_dict(), **describe(model), **extra}, path)
