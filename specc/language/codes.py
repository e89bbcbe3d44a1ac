"""Diagnostic codes: every code a spec diagnostic carries, each named once with what it means.

A code stands for one kind of mistake, so that a user (or a tool) can look it up and act on it;
docs/language.md's tables of codes are tested against this module. D-codes are the data errors
(specc.language.diagnostics.DataError), about a file specc reads rather than a place in the spec."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Code:
    """A diagnostic code (`E101`) and the one line the docs give it; a code split off another has
    that one as its `parent` (as mypy's `sub_code_of`): a user who matched the parent before the
    split matches the parent and its children now."""

    code: str
    description: str
    parent: Code | None = None

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
                         "schedule), a softmax over more items than the batch can score (data.batch x items "
                         "above 2^26)")
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
                        "start, an argument that another excludes, a stage that freezes every group, early_stop "
                        "with `valid = none`")
BAD_TEXT = Code("E312", "a text that cannot be used: an empty path or one holding a NUL character, a "
                        "delimiter of more than one character, an image mode other than gray or rgb")
OUTPUT_MISMATCH = Code("E313", "a model output that does not fit the target or the loss")

# ---------------------------------------------------------------- W: warnings

UNUSED_INPUT = Code("W201", "an input column the model does not use (a warning)")
UNUSED_PARAM = Code("W202", "a param no line uses (a warning)")
UNSCORED_METRICS = Code("W203", "metrics with `valid = none`, which training cannot compute without validation rows "
                                "(a warning: `specc evaluate` computes them on a file)")

# ---------------------------------------------------------------- D1xx: a file specc reads

UNREADABLE_PATH = Code("D101", "a file or folder specc reads that is not there, is not a regular file (a folder, a "
                               "FIFO, a device), is a symbolic link loop or a link to nothing, or cannot be read (a "
                               "path the spec names is E208 instead)")
DAMAGED_FILE = Code("D102", "a file that is not of the format it is read as, or is damaged or cut short: not "
                            "Parquet, not an .npz archive of arrays (a single .npy), a damaged archive or array, an "
                            "array whose header claims more than it holds, compressed text that cannot be "
                            "decompressed")
DATA_SHAPE = Code("D103", "data whose shape does not fit: a line with another number of fields (a names file's "
                          "too), arrays or columns with different numbers of rows, a row (of an array, a Parquet "
                          "list, a JSON array) of another shape than the spec or the model takes, a single value "
                          "where rows are needed")
WRONG_TYPE = Code("D104", "a value of another kind than its column or the model's input takes: text where a number "
                          "is needed, a number that is not whole where an id is, a boolean, null or array where an "
                          "id or category is, an array or a Parquet column of another type")
BAD_NUMBER = Code("D105", "a number the column or the model cannot take: a missing value (NaN, a null, a null "
                          "list) that fill_missing does not fill, an infinite one, or one past the input's range "
                          "(beyond float32, an id past int64 for which the model has no unknown id, a pixel that "
                          "is not a whole number from 0 to 255)")
EMPTY_SPLIT = Code("D106", "a split or filter that leaves no training or no validation rows: `last` or `random` of "
                           "too few rows, `rows(start, ...)` past the end or of every row, `per_user` of too few rows "
                           "a user, `leave_last` where no user has two rows, `keep_classes` of classes a split lacks, "
                           "an .npz's `_train` or `_valid` arrays of no rows")
MISSING_INPUT = Code("D107", "data without what the model reads: a column its header or Parquet file does not have "
                             "(or a line 1 that is neither that header nor a row laid out as the training data), an "
                             "array its .npz lacks or that --array names, a column a request lacks; for an image "
                             "model, a file where evaluate needs a folder of class folders")
BAD_MODEL_FILE = Code("D108", "a model or weights file that is not what `specc train` writes: not a readable ONNX or "
                              "safetensors file (damaged, cut short, another format; a checkpoint's too), its "
                              "metadata or tensors missing or malformed, or metadata naming a source, loss or metric "
                              "this specc does not know")
UNKNOWN_CLASS = Code("D109", "a class never seen in training: a validation row's class, a valid/ class folder with no "
                             "train/ folder, a label or class folder that evaluate is given and the model does not "
                             "know")
UNDECODABLE_IMAGE = Code("D110", "an image that cannot be decoded: damaged, cut short, not PNG, JPEG, BMP, GIF or "
                                 "WebP, or a name that is no regular file (a FIFO, a device, a link loop or a link to "
                                 "nothing)")
IMAGE_FOLDER_LAYOUT = Code("D111", "an image folder that is not one subfolder of images per class: no class folders, "
                                   "a class folder (or a folder given to predict) without images or whose every "
                                   "image was skipped, train/ without valid/, class folders that are one folder, one "
                                   "inside another or that hold the image folder, a link out of a class folder, one "
                                   "file (hard links) in two class folders, two folder names that read as one class")
BAD_PARQUET_FOLDER = Code("D112", "a `parquet(...)` folder that cannot be read as one table: no Parquet files in it, "
                                  "or files that disagree on a column the spec reads (not in every file, or of "
                                  "another type)")
TOO_MUCH_DATA = Code("D113", "data larger than specc reads into memory, found before it is held: a Parquet footer "
                             "that counts more rows than fit, a compressed CSV that expands past the limit (a "
                             "compression bomb), .npz arrays larger than it, a line longer than 16 MiB")
BAD_RUN_STATE = Code("D120", "a file training reads back from its run folder and cannot go on from: a checkpoint "
                             "whose training state is not what specc writes or does not fit this spec, data or "
                             "device; an lr_find.json that is not JSON or not the spec's stage names and positive "
                             "learning rates")

# D121-D126 were D102 before each had a code of its own: D102 is their parent.
NOT_UTF8 = Code("D121", "text that is not UTF-8 (for a names file, not in its --names-encoding): a byte in a line of "
                        "a text file, a string or bytes of an .npz array, a string of a request", DAMAGED_FILE)
NO_ROWS = Code("D122", "data with no rows: an empty file, a header alone, arrays or a request of no rows, a names "
                       "file of blank lines", DAMAGED_FILE)
MALFORMED_CSV = Code("D123", "a line the CSV reader cannot parse (Python's csv.Error: a stray or unterminated quote, "
                             "a field past the csv module's size limit)", DAMAGED_FILE)
PICKLED_ARRAY = Code("D124", "an .npz array of Python objects, which specc never unpickles", DAMAGED_FILE)
DUPLICATE_COLUMN = Code("D125", "a Parquet file with two or more columns of a name the spec reads", DAMAGED_FILE)
NAMES_DO_NOT_MATCH = Code("D126", "a names file (`inspect --names`) none of whose ids is an id of the column in the "
                                  "model (another delimiter, header or id field?)", DAMAGED_FILE)
MALFORMED_JSON = Code("D127", "a row of a JSON Lines file that is not one JSON object on its line (a syntax error, "
                              "an array or a number where the object should be, a row cut short)", DAMAGED_FILE)

VALID_FILE = Code("D128", "a `valid = file(path)` validation file that lacks a column (an array, a field) the spec reads "
                          "from the training file")
SIDE_TABLE_KEY = Code("D129", "a side table (`table NAME { ... }`) whose key is missing on a row, is on two rows, is "
                              "not a whole number where the data's ids are, or is never a training row's")
TOO_LARGE_SET = Code("D130", "a row of a `categories` column whose set holds more distinct ids than the column's "
                             "max_size (256 unless the spec says otherwise)")

BAD_FRAME = Code("D131", "a frame given to specc.train or Run.predict that Arrow cannot hold as a table: a column of "
                         "Python objects of mixed kinds, two columns of one name, arrays of unequal lengths or of "
                         "values that are neither numbers nor text")


ALL: tuple[Code, ...] = tuple(value for value in tuple(globals().values()) if isinstance(value, Code))
BY_CODE: dict[str, Code] = {c.code: c for c in ALL}
