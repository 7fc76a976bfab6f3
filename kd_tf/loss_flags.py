"""The distillation loss's settings as the command line writes them.

`--distillation_loss`, `--hint_layers`, `--tune_losses` and `--tune_ranges`
are strings on the command line and typed values in the config
(`kd_tf.config.DistillationConfig`, `TuneConfig`): `parse` turns one into the
other, at the edge, with a one-line `ConfigError` for what it cannot read;
`format_value` writes a value back (flag defaults, errors); `typed` and
`flag_default` are what `kd_tf.command_line` calls.
`RULES` and `COMBINATION_RULES` are the checks of the loss's settings that
`kd_tf.config.validate` runs; `HELP` is the flags' help, which
`kd_tf.command_line` shows.

Usage:

```python
parse("distillation_loss", "kd:0.5,dist:0.5")   # (("kd", 0.5), ("dist", 0.5))
parse("distillation_loss", "dkd")               # (("dkd", 1.0),)
parse("hint_layers", "penultimate")             # (("penultimate", "penultimate"),)
parse("tune_ranges", "dkd_beta:1:16")           # (("dkd_beta", 1.0, 16.0),)
format_value("distillation_loss", (("kd", 0.5), ("dist", 0.5)))  # "kd:0.5,dist:0.5"
format_value("distillation_loss", (("dkd", 1.0),))                # "dkd"
```
"""

from kd_tf.choices import LOGIT_LOSSES
from kd_tf.errors import ConfigError

# Loss settings `--tune_ranges` may search.
TUNABLE_SETTINGS = ("dkd_alpha", "dkd_beta", "dist_beta", "dist_gamma", "hint_weight")
# The flags this module reads and writes -> what a value must look like (for the errors).
FORMS = {
    "distillation_loss": "{0} must be kd, dkd or dist, or a weighted list NAME:WEIGHT,... of "
    "them, each once with a weight > 0 (e.g. kd:0.5,dist:0.5)",
    "hint_layers": "{0} must be penultimate or a list TEACHER_LAYER:STUDENT_LAYER,... of layer "
    "names (penultimate: the layer feeding the logits layer)",
    "tune_losses": "{0} must be a list of kd, dkd and dist, each once",
    "tune_ranges": "{0} must be a list NAME:MIN:MAX,... with 0 <= MIN < MAX, NAME one of "
    + ", ".join(TUNABLE_SETTINGS)
    + ", each once (e.g. dkd_beta:1:16)",
}


_NOT_NEGATIVE = (lambda v: v >= 0, "{0} must be >= 0")


def _unique(names):
    return len(set(names)) == len(names)


def _is_loss_list(pairs):
    names = [name for name, _ in pairs]
    return (
        bool(names)
        and _unique(names)
        and all(name in LOGIT_LOSSES and weight > 0 for name, weight in pairs)
    )


def _is_range_list(ranges):
    names = [name for name, _, _ in ranges]
    return _unique(names) and all(
        name in TUNABLE_SETTINGS and 0 <= low < high for name, low, high in ranges
    )


def _searched_losses_used(ranges, tune_losses, distillation_loss):
    """Every dkd_ or dist_ setting of `ranges` belongs to a loss some trial uses."""
    used = set(tune_losses) or {name for name, _ in distillation_loss}
    return all(name.split("_")[0] in used for name, _, _ in ranges if name.startswith("d"))


# field -> (check on its value, problem), as `kd_tf.config.validate` takes them.
RULES = {
    "distillation_loss": (_is_loss_list, FORMS["distillation_loss"]),
    "dkd_alpha": _NOT_NEGATIVE,
    "dkd_beta": _NOT_NEGATIVE,
    "dkd_warmup_epochs": _NOT_NEGATIVE,
    "dist_beta": _NOT_NEGATIVE,
    "dist_gamma": _NOT_NEGATIVE,
    "hint_layers": (
        lambda v: all(len(p) == 2 and all(p) for p in v),
        FORMS["hint_layers"],
    ),
    "hint_weight": (lambda v: v > 0, "{0} must be > 0 (e.g. 1)"),
    "mixup_alpha": _NOT_NEGATIVE,
    "tune_losses": (
        lambda v: _unique(v) and all(n in LOGIT_LOSSES for n in v),
        FORMS["tune_losses"],
    ),
    "tune_ranges": (_is_range_list, FORMS["tune_ranges"]),
}
# (fields, check on their values in order, problem), as `kd_tf.config.validate` takes them.
COMBINATION_RULES = (
    (
        ("mixup_alpha", "teacher_logits"),
        lambda mixup, mode: mixup == 0 or mode != "cached",
        "{0} blends new images every step, which cached teacher logits cannot follow: "
        "pass {1}=online (or auto)",
    ),
    (
        ("tune_ranges", "tune_losses", "distillation_loss"),
        _searched_losses_used,
        "{0} searches a setting of a loss no trial uses: add the loss to {1} (or {2})",
    ),
    (
        ("tune_ranges", "hint_layers"),
        lambda ranges, pairs: bool(pairs) or "hint_weight" not in [r[0] for r in ranges],
        "{0} searches hint_weight, and there are no hints: pass {1}",
    ),
)


def _items(text):
    return [item.strip() for item in text.split(",") if item.strip()]


def _number(text, name, value):
    try:
        return float(text)
    except ValueError:
        raise ConfigError((name,), FORMS[name], (value,)) from None


def _parts(item, name, value, counts):
    parts = item.split(":")
    if len(parts) not in counts or not all(parts):
        raise ConfigError((name,), FORMS[name], (value,))
    return parts


def parse(name, value):
    """The typed value of flag `name` written as the string `value` (or the
    list of its comma-separated items, as absl's list flags give it).

    Raises:
        ConfigError: `value` is not of the flag's form (`FORMS`).
    """
    items = _items(",".join(value) if isinstance(value, (list, tuple)) else value or "")
    if name == "distillation_loss":
        pairs = [_parts(item, name, value, (1, 2)) for item in items]
        return tuple((p[0], _number(p[1], name, value) if len(p) == 2 else 1.0) for p in pairs)
    if name == "hint_layers":
        pairs = [_parts(item, name, value, (1, 2)) for item in items]
        return tuple((p[0], p[-1]) for p in pairs)
    if name == "tune_ranges":
        triples = [_parts(item, name, value, (3,)) for item in items]
        return tuple((t[0], _number(t[1], name, value), _number(t[2], name, value)) for t in triples)
    return tuple(items)


def typed(values):
    """`{field: flag value}` with the values of the flags of `FORMS` parsed."""
    return {name: parse(name, v) if name in FORMS else v for name, v in values.items()}


def flag_default(name, default):
    """The default of flag `name` as its flag takes it (`FORMS`' as written)."""
    return format_value(name, default) if name in FORMS else default


def format_value(name, value):
    """`value` of flag `name` as the command line writes it."""
    if name == "distillation_loss":
        return ",".join(loss if weight == 1 else f"{loss}:{weight:g}" for loss, weight in value)
    if name == "hint_layers":
        return ",".join(f"{teacher}:{student}" for teacher, student in value)
    if name == "tune_ranges":
        return ",".join(f"{setting}:{low:g}:{high:g}" for setting, low, high in value)
    return ",".join(value)


HELP = (
    (
        "distillation_loss",
        "The distillation terms, weighted by --alpha against the hard labels' cross-entropy: "
        "kd (Hinton et al. 2015), dkd (decoupled KD, Zhao et al. 2022), dist (DIST, Huang "
        "et al. 2022), or a weighted list such as kd:0.5,dist:0.5. All soften with "
        "--temperature.",
    ),
    ("dkd_alpha", "dkd: weight of its target-class term (TCKD)."),
    ("dkd_beta", "dkd: weight of its non-target-classes term (NCKD); 2 for similar-capacity pairs."),
    ("dkd_warmup_epochs", "dkd: epochs over which it ramps up linearly from 0 (0: none)."),
    ("dist_beta", "dist: weight of its inter-class term (each example's classes)."),
    ("dist_gamma", "dist: weight of its intra-class term (each class across the batch)."),
    (
        "hint_layers",
        "Feature hints: TEACHER_LAYER:STUDENT_LAYER,... pairs of layer names, or penultimate "
        "(the layers feeding each model's logits layer). A learned projection (dense or 1x1 "
        "convolution) maps the student's features onto the teacher's where the shapes "
        "differ; it is not exported. Needs a kd_tf export or a .keras teacher.",
    ),
    ("hint_weight", "Weight of each hint's mean squared error among the distillation terms."),
    (
        "mixup_alpha",
        "Mixup of the training images for --stage=student (0: off): each batch is blended "
        "with itself shifted by one, by a ratio drawn from Beta(a, a); teacher and student "
        "see the same blended image (the teacher online), the hard term the blended labels.",
    ),
    (
        "tune_losses",
        "--stage=tune: the distillation losses a trial chooses from (e.g. kd,dkd,dist); "
        "empty: --distillation_loss for every trial.",
    ),
    (
        "tune_ranges",
        "--stage=tune: loss settings searched besides temperature and alpha, NAME:MIN:MAX,... "
        f"({', '.join(TUNABLE_SETTINGS)}); log-uniform when MIN > 0; a dkd_ or dist_ "
        "setting only in trials of its loss.",
    ),
)
