"""Settings on the command line and in config files, for the scripts that declare their
settings as fastargs Sections (train_vit.py): checkers that mean what they say, parsing that
names a wrong setting and the nearest right one, and a plain-text --help.

What fastargs alone gets wrong, and what this module does instead:
- its bool checker reads 'false' as True (Flag); its float takes nan and inf, and its
  InRange lets nan through (Real: finite and bounded);
- argparse's prefix matching takes `--training.max_step=3` for `--training.max_steps`
  (ArgumentParser: allow_abbrev=False), and an unknown flag or YAML key gets no hint
  (parse: "did you mean ...");
- its --help table is drawn with terminal line-drawing codes that turn into garbage in a
  pipe or a log, and shows '' defaults as blanks (settings_help: plain text).
"""
import argparse
import difflib
import math
import sys
from pathlib import Path

import numpy as np
import yaml
from fastargs import get_current_config
from fastargs.validation import Checker

FP32_MAX = float(np.finfo(np.float32).max)  # 3.4e38: the largest float32


class ConfigError(Exception):
    """A setting or an input file is wrong; the message says which and what to do."""


class Flag(Checker):
    """true/false, yes/no, on/off, 1/0. (fastargs' own bool checker reads 'false' as True.)"""
    def check(self, value):
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)

    def help(self):
        return "a boolean (true/false or 1/0)"


class RepSize(Checker):
    """big_vision's rep_size: true (pre-logits as wide as the model), false (none) or an int."""
    def check(self, value):
        try:
            return Flag().check(value)
        except ValueError:
            if int(value) > 0:
                return int(value)
            raise

    def help(self):
        return "true, false or a positive int"


class Real(Checker):
    """A finite float in [low, high] (high itself excluded when open_high). The default
    bound is FP32_MAX: the training code does its float math in float32 (lr, eps, clipping,
    decay), so a larger value (lr=1e39) fails here, named, and not as inf weights mid-step."""
    def __init__(self, low=0.0, high=FP32_MAX, open_high=False):
        self.low, self.high, self.open_high = low, high, open_high

    def check(self, value):
        x = float(value)
        if not (math.isfinite(x) and self.low <= x
                and (x < self.high if self.open_high else x <= self.high)):
            raise ValueError(value)
        return x

    def help(self):
        return (f"a float and between {self.low:g} and {self.high:g}"
                + (f" ({self.high:g} excluded)" if self.open_high else ""))


class ArgumentParser(argparse.ArgumentParser):
    """argparse without prefix matching, whose errors are ConfigErrors naming the nearest
    known flag."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, add_help=False, **kwargs)

    def parse_args(self, args=None, namespace=None):
        args, unknown = self.parse_known_args(args, namespace)
        if unknown:
            known = [o for o in self._option_string_actions if o.startswith("--")]
            raise ConfigError("unknown command-line arguments " + ", ".join(
                _hint(arg, arg.split("=", 1)[0], known) for arg in unknown)
                + f". `python {self.prog} --help` lists them all.")
        return args

    def error(self, message):
        raise ConfigError(f"command line: {message}")


def _hint(text, name, known):
    close = difflib.get_close_matches(name, known, 2, cutoff=0.8)
    return f"{text} (did you mean {' or '.join(close)}?)" if close else text


def settings_help(config, sections=None):
    """Every setting of a fastargs config (of `sections`, default all) as plain text,
    section by section: the flag with its default, what it does, what it accepts."""
    def shown(p):
        if p.required:
            return " (required)"
        if isinstance(p.default, bool):
            return "=" + str(p.default).lower()
        return "=" + (repr(p.default) if p.default == "" else str(p.default))
    lines = ["settings: --section.name=value on the command line, or `section: {name: value}` "
             "in a --config-file (later files and the command line win)"]
    for ns, paths in config.sections_to_entries.items():
        if sections is None or ns[0] in sections:
            lines += ["", f"{'.'.join(ns)}: {config.sections[ns].desc}"]
            for path in paths:
                p = config.entries[path]
                lines += [f"  --{'.'.join(path)}{shown(p)}", f"      {p.desc} ({p.checker.help()})"]
    return "\n".join(lines)


def parse(argv, sections, description, prog):
    """The fastargs config from --config-file files and --section.name=value flags (argv:
    None = sys.argv), then the checks fastargs skips: keys no section declares (a typo would
    be silently ignored) and missing or invalid values, each named. --help prints every
    setting and exits."""
    config = get_current_config()
    config.content.clear()  # a script's main() may run more than once in a process (tests)
    saved_argv = sys.argv
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        parser = ArgumentParser(prog=prog, description=description)
        parser.add_argument("-h", "--help", action="store_true", help="show every setting, exit")
        config.augment_argparse(parser)  # reads the files too
        args = parser.parse_args()
        if args.help:
            parser.epilog = settings_help(config, sections)
            parser.print_help()
            raise SystemExit(0)
        config.collect_argparse_args(parser)
    except FileNotFoundError as e:
        raise ConfigError(f"--config-file {e.filename}: no such file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config-file: not valid YAML: {e}") from None
    finally:
        sys.argv = saved_argv
    known = {".".join(path) for path in config.entries if path[0] in sections}
    for fname in args.config_file:
        content = yaml.safe_load(Path(fname).read_text())
        unknown = [key for key in _flatten(content or {}) if key not in known]
        if unknown:
            raise ConfigError(f"{fname}: unknown settings "
                              f"{', '.join(_hint(k, k, known) for k in unknown)}. "
                              f"`python {parser.prog} --help` lists them all.")
    errors = {p: e for p, e in config.validate(mode="errordict").items() if p[0] in sections}
    if errors:
        lines = [f"{'.'.join(p)}: " + ("required, not set" if type(e).__name__ == "MissingValueError"
                 else f"got {config.content.get(p)!r}, expected {config.entries[p].checker.help()}")
                 for p, e in errors.items()]
        raise ConfigError("bad settings:\n  " + "\n  ".join(lines))
    return config


def _flatten(tree, prefix=""):
    if not isinstance(tree, dict):
        raise ConfigError(f"config file: expected 'section: {{name: value}}', got {tree!r}")
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def model_parser(doc):
    """The argument parser of a script that uses a trained model (eval_vit.py, predict.py):
    its docstring's first paragraph as the description, the rest as the epilog, and the
    model (a run folder, its checkpoint.pt, or a big_vision .npz with its --variant)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=doc.split("\n\n", 1)[1])
    p.add_argument("model", help="run folder, checkpoint.pt, export_vit.py .safetensors, or "
                                 "big_vision .npz")
    p.add_argument("--variant", default="S/16", help="a big_vision .npz's variant (S/16)")
    return p
