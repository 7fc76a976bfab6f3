"""The exception types that signal a user mistake."""


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr, exit status 2.

    Raise it with a message that names the problem and says what to do, e.g.
    `UserError("/x does not exist: pass the directory of an export")`.
    """


class ConfigError(UserError):
    """A config value (or a combination of values) the run cannot take.

    The library names config fields, not command-line flags: `problem` refers
    to them as `{0}`, `{1}`, ... in the order of `fields` (other braces are
    kept as they are), and the command line
    writes each as the flag the user typed (`kd_tf.command_line`). `str()`
    writes the bare field names.

    Args:
        fields: names of the config fields involved, e.g. `("batch_size",)`.
        problem: what is wrong and what to do, e.g.
            `"{0} must be a multiple of 2"`.
        values: the values of `fields` that were refused, where known.

    Usage:

    ```python
    raise ConfigError(("alpha_min", "alpha_max"), "{0} must be < {1}")
    ```
    """

    def __init__(self, fields, problem, values=()):
        self.fields = tuple(fields)
        self.problem = problem
        self.values = tuple(values)
        super().__init__(self.describe(str))

    def describe(self, name_of):
        """The message with each field written as `name_of(field)`."""
        message = self.problem
        for index, field in enumerate(self.fields):
            message = message.replace(f"{{{index}}}", name_of(field))
        return message
