"""Diagnostic codes: every code a spec diagnostic carries, each named once with what it means.

A code stands for one kind of mistake, so that a user (or a tool) can look it up and act on it;
docs/language.md's table of codes is tested against this module. Data file errors (D1xx) are
specc.language.diagnostics.DataError's and are listed in the docs on their own."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Code:
    """A diagnostic code (`E101`) and the one line the docs give it."""

    code: str
    description: str

    def __str__(self) -> str:
        return self.code


# ---------------------------------------------------------------- E0xx: the text does not parse

UNEXPECTED_CHARACTER = Code("E001", "a character that cannot start any token")
UNEXPECTED_TOKEN = Code("E002", "an unexpected token (or a missing one, shown just after the token before it)")
UNEXPECTED_END = Code("E003", "the file ends inside a statement, bracket or block")
UNTERMINATED_STRING = Code("E004", "an unterminated string")
NOT_TEXT = Code("E005", "the file is not UTF-8 text")

# ---------------------------------------------------------------- E1xx: blocks and statements

UNKNOWN_BLOCK = Code("E101", "an unknown block")
UNKNOWN_SETTING = Code("E102", "an unknown setting, statement, section or `--set` key")
DEFINED_TWICE = Code("E103", "something defined twice, or a name that is already taken")
MISSING = Code("E104", "something required is missing")
OUTSIDE_GROUPS = Code("E105", "a layer with weights outside every group (when the model has groups)")
MISPLACED_STATEMENT = Code("E106", "a statement in the wrong place or of the wrong form: a fit written as a "
                                   "setting, a fit beside stages, a model call without a name, a malformed `init`")

# ---------------------------------------------------------------- E2xx: names, calls and files

UNKNOWN_NAME = Code("E201", "an unknown name or column")
UNKNOWN_FUNCTION = Code("E202", "an unknown function, loss, metric, optimizer or proc")
BAD_ARGUMENTS = Code("E203", "arguments that do not fit the call: too many, unknown, given twice, missing")
NOT_IN_DATA = Code("E205", "a column or array the data file does not have")
SPLIT_IN_DATA = Code("E206", "a validation split the data file already brings")
BAD_INIT_RUN = Code("E207", "`init` cannot take a group's weights: no such run, a damaged `model.safetensors`, "
                            "or names and shapes that differ (`specc check` reads the run's header)")
DATA_FILE = Code("E208", "a data file the spec names is not there, is not a regular file (a device, a FIFO, "
                         "a folder, a link loop) or cannot be read; an images(...) folder that is not there or "
                         "not a folder (reported at the path in the spec)")
ARRAY_SHAPE = Code("E209", "an array in the data file whose rows have another shape than the spec declares")
COLUMN_TYPE = Code("E210", "a column whose type in the data file does not fit the spec's declaration (a Parquet "
                           "string column declared float, a float column declared a category, a scalar declared "
                           "float(784))")

# ---------------------------------------------------------------- E3xx: values, shapes and sizes

WRONG_KIND = Code("E301", "a value of the wrong kind: expected one kind (a number, a string, a list, a name, "
                          "a tensor value, ...), found another")
OUT_OF_RANGE = Code("E302", "a number out of its range (a number beyond about 1.8e308, a division by zero, too)")
SHAPE_MISMATCH = Code("E303", "values whose shapes do not fit the operation: widths that differ, an image where "
                              "a row of features is needed, a width that is only known as `classes`")
TARGET_KIND = Code("E304", "a loss, metric or setting that needs another kind of target (`keep_classes` and "
                           "`classes` need a category target)")
DATA_SIZE = Code("E305", "what the data's size rules out, found once it is read: batchnorm on training batches "
                         "of one row, a one-cycle warm-up of exactly one step (which torch's OneCycleLR cannot "
                         "schedule)")
TOO_DEEP = Code("E306", "an expression nested more than 200 levels deep (see \"Values\"), as written or "
                        "once the params and --set values it holds are put in")
TOO_LARGE = Code("E307", "training that needs more memory than there is (SPECC_MEMORY, else the room under the "
                         "cgroup's limit or MemAvailable): the weights, gradients and optimizer state, the values "
                         "a step keeps at the batch size (or validation's), the data as prepared, an images(...) "
                         "folder at its size (before an image is decoded); before the data is read, the weights "
                         "of the layers whose sizes are known; while training, an allocation torch could not make, "
                         "at the spec line it was computing")
NOT_WHOLE = Code("E308", "a number that must be whole is not")
BAD_COLUMN = Code("E309", "a column declaration that is not `name: type`, has an unknown type, or has a shape "
                          "or scale that its type or source cannot have (an images(...) source's `image` is an "
                          "input of its shape, its `label` a category target)")
NOT_A_VALUE = Code("E310", "a category column or `classes` used as a model value")
CONFLICT = Code("E311", "values that contradict each other: a high not above its low, an end not after its "
                        "start, an argument that another excludes, a stage that freezes every group")
BAD_TEXT = Code("E312", "a text that cannot be used: an empty path or one holding a NUL character, a "
                        "delimiter of more than one character, an image mode other than gray or rgb")
OUTPUT_MISMATCH = Code("E313", "a model output that does not fit the target or the loss")

# ---------------------------------------------------------------- W: warnings

UNUSED_INPUT = Code("W201", "an input column the model does not use (a warning)")
UNUSED_PARAM = Code("W202", "a param no line uses (a warning)")


ALL: tuple[Code, ...] = tuple(value for value in tuple(globals().values()) if isinstance(value, Code))
BY_CODE: dict[str, Code] = {c.code: c for c in ALL}
