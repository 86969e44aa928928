/* The complexity scorer's request path in C (fed by extproc/complexity/native.py). One call per
 * prompt: a pass over the prepared text's UTF-8 bytes for the structure counts, its tokens and
 * their ids, the cue counts, the strong_gain head's TF-IDF sum, the 61 difficulty features, the
 * difficulty head (ridge + boosted trees) and the strong_gain head's trees (on the difficulty
 * features and the numbers before the choices).
 *
 * The numpy code in features.py / lexical.py / scorer.py is the definition; this module computes
 * the same numbers (tests/complexity/test_native.py: the same ids, counts and features, exactly,
 * and the same levels and raw gains to rounding). Tables are copied in at model load and laid out
 * for few cache lines per token. The scratch buffers of an object are used with the GIL held and
 * done with before the one call back into Python (the requested-size regex), during which another
 * thread could use them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ORDER 8
/* features.STRUCTURE: the features before the cue counts */
#define STRUCTURE_FEATURES 17
/* features.text_counts, in its order */
enum { ASK_BYTES, ASK_NON_ASCII, PASTED_NON_ASCII, NON_ASCII_BYTES, CODE, CARETS, MATH, DIGITS, NEWLINES,
       LIST_MARKS, FENCES, BACKSLASHES, QUESTIONS, SPACES, COUNTS };

/* ---- helpers -------------------------------------------------------------------------------- */

/* A copy of a C-contiguous buffer of `itemsize`-byte items (the Python side passes numpy arrays
 * of the right dtype). */
static void *copy_buffer(PyObject *obj, Py_ssize_t itemsize, Py_ssize_t *count, const char *what) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (view.itemsize != itemsize || view.len % itemsize != 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected items of %zd bytes", what, itemsize);
        PyBuffer_Release(&view);
        return NULL;
    }
    void *out = PyMem_Malloc(view.len > 0 ? (size_t)view.len : 1);
    if (out == NULL) {
        PyBuffer_Release(&view);
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(out, view.buf, (size_t)view.len);
    *count = view.len / itemsize;
    PyBuffer_Release(&view);
    return out;
}

static uint64_t hash_bytes(const unsigned char *s, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

static uint64_t table_size(Py_ssize_t entries) {
    uint64_t size = 16;
    while (size < (uint64_t)entries * 2) size <<= 1;
    return size;
}

/* ---- Difficulty: ridge + boosted trees, calibrated ------------------------------------------- */

typedef struct {
    PyObject_HEAD
    double *weights;
    Py_ssize_t features;
    double intercept, blend, a, b;
    int64_t *feature; /* [trees][internal] */
    double *threshold;
    double *value; /* [trees][nodes] */
    Py_ssize_t trees, internal, nodes;
    int depth;
    double init, rate;
    double *x;
} Difficulty;

static void Difficulty_dealloc(Difficulty *self) {
    PyMem_Free(self->weights);
    PyMem_Free(self->feature);
    PyMem_Free(self->threshold);
    PyMem_Free(self->value);
    PyMem_Free(self->x);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Difficulty_init(Difficulty *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"weights", "intercept", "blend", "a", "b", "feature", "threshold",
                            "value", "trees", "init", "rate", NULL};
    PyObject *weights, *feature, *threshold, *value;
    Py_ssize_t trees;
    if (self->weights != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Difficulty is immutable");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OddddOOOndd", names, &weights, &self->intercept,
                                     &self->blend, &self->a, &self->b, &feature, &threshold, &value,
                                     &trees, &self->init, &self->rate))
        return -1;
    Py_ssize_t splits, thresholds, values;
    self->weights = copy_buffer(weights, 8, &self->features, "weights");
    if (self->weights == NULL) return -1;
    self->feature = copy_buffer(feature, 8, &splits, "feature");
    if (self->feature == NULL) return -1;
    self->threshold = copy_buffer(threshold, 8, &thresholds, "threshold");
    if (self->threshold == NULL) return -1;
    self->value = copy_buffer(value, 8, &values, "value");
    if (self->value == NULL) return -1;
    self->x = PyMem_Malloc((size_t)(self->features > 0 ? self->features : 1) * sizeof(double));
    if (self->x == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->trees = trees;
    if (trees < 1 || splits % trees != 0 || thresholds != splits || values % trees != 0) goto shape;
    self->internal = splits / trees;
    self->nodes = values / trees;
    self->depth = 0;
    while (((Py_ssize_t)1 << (self->depth + 1)) - 1 <= self->internal) self->depth++;
    if (((Py_ssize_t)1 << self->depth) - 1 != self->internal || self->nodes != 2 * self->internal + 1) goto shape;
    for (Py_ssize_t i = 0; i < splits; i++)
        if (self->feature[i] < 0 || self->feature[i] >= self->features) goto shape;
    return 0;
shape:
    PyErr_SetString(PyExc_ValueError, "difficulty head arrays of inconsistent sizes");
    return -1;
}

/* DifficultyHead.level(DifficultyHead.raw(x)) for `self->features` values. */
static double difficulty_level(const Difficulty *self, const double *x) {
    double ridge = 0.0;
    for (Py_ssize_t i = 0; i < self->features; i++) ridge += x[i] * self->weights[i];
    ridge += self->intercept;
    double leaves = 0.0;
    for (Py_ssize_t t = 0; t < self->trees; t++) {
        const int64_t *feature = self->feature + t * self->internal;
        const double *threshold = self->threshold + t * self->internal;
        Py_ssize_t node = 0;
        for (int level = 0; level < self->depth; level++) {
            /* the trees were fitted on float32 features: compared as scikit-learn does */
            double value = (double)(float)x[feature[node]];
            node = 2 * node + 1 + (value > threshold[node]);
        }
        leaves += self->value[t * self->nodes + node];
    }
    double trees = self->init + self->rate * leaves;
    double raw = self->blend * ridge + (1.0 - self->blend) * trees;
    return self->a * raw + self->b;
}

/* The same for a list of floats. */
static PyObject *Difficulty_level(Difficulty *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "features must be a sequence of floats");
    if (seq == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != self->features) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "wrong number of features");
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < self->features; i++) {
        double v = PyFloat_AsDouble(items[i]);
        if (v == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
        self->x[i] = v;
    }
    Py_DECREF(seq);
    return PyFloat_FromDouble(difficulty_level(self, self->x));
}

static PyMethodDef Difficulty_methods[] = {
    {"level", (PyCFunction)Difficulty_level, METH_O, "level(features) -> the calibrated level"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DifficultyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "extproc.complexity._native.Difficulty",
    .tp_basicsize = sizeof(Difficulty),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The difficulty head (ridge + boosted trees, calibrated) on a feature list.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Difficulty_init,
    .tp_dealloc = (destructor)Difficulty_dealloc,
    .tp_methods = Difficulty_methods,
};

/* ---- Scanner: token ids, cue counts, lexical head -------------------------------------------- */

/* Tables are laid out for few cache lines per token (the scorer runs between other work, so its
 * tables are mostly not in the cache): one slot gives a token's id and its unigram column, the
 * bigrams are rows per first token, and the counts of a prompt's columns live in a small table. */

#define PACKED_BYTES 8
#define PREFETCH_AHEAD 8 /* tokens: how far ahead a table slot is fetched */
#define STARTS_CUE 0x100    /* the token starts a cue of 2+ tokens */
#define CONTINUES_CUE 0x200 /* the token is the second of a cue of 2+ tokens */

typedef struct {
    uint64_t key; /* a token of at most 8 bytes as one little-endian integer (0: empty slot) */
    int32_t id;
    int32_t column; /* the lexical head's unigram column (-1: none) */
    double idf[2];  /* that column's idf·weight and idf² (in the same cache line) */
} ShortSlot;

typedef struct {
    uint64_t hash;
    uint32_t offset; /* into long_bytes */
    uint32_t length; /* 0: empty slot */
    int32_t id;
    int32_t column;
    double idf[2];
} LongSlot;

typedef struct {
    int32_t column; /* -1: empty */
    int32_t count;
    const double *idf; /* the column's idf·weight and idf² */
} ColumnCount;

typedef struct {
    int64_t key; /* a cue's packed key, as FeatureExtractor packs it (-1: empty) */
    int32_t group; /* its cue group; -2: only the start of longer cues */
} CueSlot;

typedef struct {
    uint32_t key; /* a·V + b */
    int32_t column; /* -1: empty */
    double idf[2];
} BigramSlot;

typedef struct {
    PyObject_HEAD
    /* token -> id and unigram column */
    ShortSlot *short_slots;
    uint64_t short_mask;
    int short_shift;
    LongSlot *long_slots;
    uint64_t long_mask;
    unsigned char *long_bytes;
    int32_t unknown_column;
    /* cue groups */
    int64_t base;
    uint16_t *cue_info; /* [base]: the token's cue group + 1 (0: none), STARTS_CUE, CONTINUES_CUE */
    CueSlot *cues; /* every cue of 2+ tokens and each of its prefixes, by packed key */
    uint64_t cue_mask;
    int max_cue_tokens;
    int64_t cue_offsets[MAX_ORDER]; /* [L - 1]: added to the packed key of an L-token cue */
    Py_ssize_t groups, ask_head, ask_tail;
    /* the difficulty head and the parts of the features left to Python (regular expressions) */
    Difficulty *difficulty;
    /* the strong_gain head's trees, as a Difficulty of shrink x trees (NULL: none) */
    Difficulty *gain_trees;
    Py_ssize_t size_unit; /* the cue group of output size units */
    double *log1p_table;  /* np.log1p of the usual cue counts */
    Py_ssize_t log1p_size;
    PyObject *requested_size, *log1p_counts;
    /* the size units' UTF-8 forms (features.SIZE_UNIT_STARTS), and which bytes start one */
    PyObject *size_units; /* a tuple of bytes */
    uint8_t unit_pair[65536 / 8]; /* a bit per pair of first bytes of a unit */
    /* the structure features' math symbols: a bit per code point up to the largest */
    uint8_t *math_symbols;
    Py_UCS4 math_symbol_limit; /* one past the largest (0: none) */
    /* the lexical head: bigram (a, b) -> column by a table keyed a·V + b (V² < 2**32) */
    int64_t vocab; /* V: ids below it are the head's own, the rest unknown (0) to it */
    int order;
    uint8_t *starts_bigram; /* [V] */
    BigramSlot *bigrams;
    int bigram_shift;
    uint64_t bigram_mask;
    double *idf; /* per column: idf·weight, idf² */
    double tf[64]; /* 1 + log(count) of the usual counts */
    Py_ssize_t columns;
    double intercept;
    /* scratch */
    int32_t *ids, *unigram_columns, *token_start, *token_length;
    uint64_t *token_key;
    const double **unigram_idf;
    Py_ssize_t ids_capacity;
    ColumnCount *counts;
    int32_t *touched;
    Py_ssize_t counts_capacity; /* a power of two; touched has half as many */
} Scanner;

static void Scanner_dealloc(Scanner *self) {
    PyMem_Free(self->short_slots);
    PyMem_Free(self->long_slots);
    PyMem_Free(self->long_bytes);
    PyMem_Free(self->cue_info);
    PyMem_Free(self->cues);
    PyMem_Free(self->log1p_table);
    Py_XDECREF(self->difficulty);
    Py_XDECREF(self->gain_trees);
    Py_XDECREF(self->requested_size);
    Py_XDECREF(self->size_units);
    Py_XDECREF(self->log1p_counts);
    PyMem_Free(self->math_symbols);
    PyMem_Free(self->starts_bigram);
    PyMem_Free(self->bigrams);
    PyMem_Free(self->idf);
    PyMem_Free(self->ids);
    PyMem_Free(self->unigram_columns);
    PyMem_Free(self->unigram_idf);
    PyMem_Free(self->token_start);
    PyMem_Free(self->token_length);
    PyMem_Free(self->token_key);
    PyMem_Free(self->counts);
    PyMem_Free(self->touched);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static inline uint64_t pack(const unsigned char *s, Py_ssize_t n) {
    uint64_t key = 0;
    for (Py_ssize_t i = n - 1; i >= 0; i--) key = (key << 8) | s[i];
    return key;
}

static inline uint64_t short_slot(const Scanner *self, uint64_t key) {
    return (key * 0x9E3779B97F4A7C15ULL) >> self->short_shift;
}

/* The token table from the token -> id dict; `unigram_column` maps the lexical head's ids. */
static int build_token_table(Scanner *self, PyObject *index, const int64_t *unigram_column) {
    if (!PyDict_Check(index)) {
        PyErr_SetString(PyExc_TypeError, "token_index must be a dict of bytes to int");
        return -1;
    }
    Py_ssize_t shorts = 0, longs = 0, long_total = 0, pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(index, &pos, &key, &value)) {
        if (!PyBytes_Check(key) || !PyLong_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "token_index must be a dict of bytes to int");
            return -1;
        }
        Py_ssize_t length = PyBytes_GET_SIZE(key);
        if (length > PACKED_BYTES) {
            longs++;
            long_total += length;
        } else if (length > 0) {
            shorts++;
        }
    }
    if (long_total >= UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "token index too large");
        return -1;
    }
    uint64_t short_size = 16, long_size = table_size(longs);
    while (short_size < (uint64_t)shorts * 3 / 2) short_size <<= 1; /* at most 2/3 full: 16-byte slots */
    self->short_shift = 64;
    for (uint64_t size = short_size; size > 1; size >>= 1) self->short_shift--;
    self->short_mask = short_size - 1;
    self->long_mask = long_size - 1;
    self->short_slots = PyMem_Calloc(short_size, sizeof(ShortSlot));
    self->long_slots = PyMem_Calloc(long_size, sizeof(LongSlot));
    self->long_bytes = PyMem_Malloc((size_t)long_total + 1);
    if (self->short_slots == NULL || self->long_slots == NULL || self->long_bytes == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    uint32_t offset = 0;
    pos = 0;
    while (PyDict_Next(index, &pos, &key, &value)) {
        Py_ssize_t length = PyBytes_GET_SIZE(key);
        if (length == 0) continue; /* no token is empty: never looked up */
        long long id = PyLong_AsLongLong(value);
        if (id == -1 && PyErr_Occurred()) return -1;
        if (id < 1 || id >= self->base) {
            PyErr_SetString(PyExc_ValueError, "token ids must be in [1, base)");
            return -1;
        }
        int32_t column = (int32_t)unigram_column[id < self->vocab ? id : 0];
        double idf_weight = column >= 0 ? self->idf[2 * column] : 0.0;
        double idf_squared = column >= 0 ? self->idf[2 * column + 1] : 0.0;
        const unsigned char *text = (const unsigned char *)PyBytes_AS_STRING(key);
        if (length <= PACKED_BYTES) {
            uint64_t packed = pack(text, length);
            if (memchr(text, 0, (size_t)length) != NULL) continue; /* never a token: no zero byte */
            uint64_t slot = short_slot(self, packed);
            while (self->short_slots[slot].key != 0) slot = (slot + 1) & self->short_mask;
            self->short_slots[slot] = (ShortSlot){packed, (int32_t)id, column, {idf_weight, idf_squared}};
        } else {
            memcpy(self->long_bytes + offset, text, (size_t)length);
            uint64_t h = hash_bytes(text, length);
            uint64_t slot = h & self->long_mask;
            while (self->long_slots[slot].length != 0) slot = (slot + 1) & self->long_mask;
            self->long_slots[slot] =
                (LongSlot){h, offset, (uint32_t)length, (int32_t)id, column, {idf_weight, idf_squared}};
            offset += (uint32_t)length;
        }
    }
    self->unknown_column = (int32_t)unigram_column[0];
    return 0;
}

/* A token's id and unigram column (unknown: id 0). */
static inline void look_up(const Scanner *self, const unsigned char *s, Py_ssize_t n, uint64_t key, int32_t *id,
                           int32_t *column, const double **idf) {
    if (n <= PACKED_BYTES) {
        uint64_t slot = short_slot(self, key);
        for (;;) {
            const ShortSlot *t = &self->short_slots[slot];
            if (t->key == key) {
                *id = t->id;
                *column = t->column;
                *idf = t->idf;
                return;
            }
            if (t->key == 0) break;
            slot = (slot + 1) & self->short_mask;
        }
    } else {
        uint64_t h = hash_bytes(s, n);
        uint64_t slot = h & self->long_mask;
        for (;;) {
            const LongSlot *t = &self->long_slots[slot];
            if (t->length == 0) break;
            if (t->hash == h && t->length == (uint32_t)n && memcmp(self->long_bytes + t->offset, s, (size_t)n) == 0) {
                *id = t->id;
                *column = t->column;
                *idf = t->idf;
                return;
            }
            slot = (slot + 1) & self->long_mask;
        }
    }
    *id = 0;
    *column = self->unknown_column;
    *idf = self->unknown_column >= 0 ? self->idf + 2 * (Py_ssize_t)self->unknown_column : NULL;
}

static inline uint64_t bigram_slot(const Scanner *self, uint32_t key) {
    return ((uint64_t)key * 0x9E3779B97F4A7C15ULL) >> self->bigram_shift;
}

/* The bigram table from the lexical head's n-gram keys past the unigrams (ascending bigram keys,
 * whose columns follow the unigrams' in key order). */
static int build_bigrams(Scanner *self, PyObject *keys_obj, Py_ssize_t first_column) {
    Py_ssize_t count;
    int64_t *keys = copy_buffer(keys_obj, 8, &count, "gram_keys");
    if (keys == NULL) return -1;
    int64_t v = self->vocab, offset = v * v; /* a bigram's key: a·V + b + (2 - 1)·V² */
    uint64_t size = 16;
    while (size < (uint64_t)count * 2) size <<= 1;
    self->bigram_shift = 64;
    for (uint64_t n = size; n > 1; n >>= 1) self->bigram_shift--;
    self->bigram_mask = size - 1;
    self->starts_bigram = PyMem_Calloc((size_t)v, 1);
    self->bigrams = PyMem_Malloc(size * sizeof(BigramSlot));
    if (self->starts_bigram == NULL || self->bigrams == NULL) {
        PyMem_Free(keys);
        PyErr_NoMemory();
        return -1;
    }
    for (uint64_t i = 0; i < size; i++) self->bigrams[i] = (BigramSlot){0, -1, {0.0, 0.0}};
    if (first_column + count > self->columns) goto shape;
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t packed = keys[i] - offset;
        if (packed < 0 || packed >= v * v || (i > 0 && keys[i] <= keys[i - 1])) goto shape;
        self->starts_bigram[packed / v] = 1;
        uint64_t slot = bigram_slot(self, (uint32_t)packed);
        while (self->bigrams[slot].column != -1) slot = (slot + 1) & self->bigram_mask;
        const double *idf = self->idf + 2 * (first_column + i);
        self->bigrams[slot] = (BigramSlot){(uint32_t)packed, (int32_t)(first_column + i), {idf[0], idf[1]}};
    }
    PyMem_Free(keys);
    return 0;
shape:
    PyMem_Free(keys);
    PyErr_SetString(PyExc_ValueError, "n-gram keys past the unigrams must be ascending bigram keys");
    return -1;
}

static inline const BigramSlot *find_bigram(const Scanner *self, int32_t a, int32_t b) {
    uint32_t key = (uint32_t)a * (uint32_t)self->vocab + (uint32_t)b;
    uint64_t slot = bigram_slot(self, key);
    for (;;) {
        const BigramSlot *t = &self->bigrams[slot];
        if (t->column == -1) return NULL;
        if (t->key == key) return t;
        slot = (slot + 1) & self->bigram_mask;
    }
}

static CueSlot *cue_slot(const Scanner *self, int64_t key) {
    uint64_t slot = ((uint64_t)key * 0x9E3779B97F4A7C15ULL >> 32) & self->cue_mask;
    while (self->cues[slot].key != -1 && self->cues[slot].key != key) slot = (slot + 1) & self->cue_mask;
    return &self->cues[slot];
}

/* The cue table from FeatureExtractor's sorted keys of the cues of 2+ tokens and their groups. */
static int build_cues(Scanner *self, const int64_t *keys, const int64_t *groups, Py_ssize_t count,
                      Py_ssize_t group_count) {
    if (group_count != count) {
        PyErr_SetString(PyExc_ValueError, "cue keys and groups of different sizes");
        return -1;
    }
    uint64_t size = 16;
    while (size < (uint64_t)count * self->max_cue_tokens * 2) size <<= 1;
    self->cue_mask = size - 1;
    self->cues = PyMem_Malloc(size * sizeof(CueSlot));
    if (self->cues == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (uint64_t i = 0; i < size; i++) self->cues[i] = (CueSlot){-1, -2};
    for (Py_ssize_t i = 0; i < count; i++) {
        int length = self->max_cue_tokens;
        while (length > 2 && keys[i] < self->cue_offsets[length - 1]) length--;
        int64_t packed = keys[i] - self->cue_offsets[length - 1];
        if (length < 2 || packed < 0 || groups[i] < 0 || groups[i] >= self->groups) {
            PyErr_SetString(PyExc_ValueError, "cue keys of 2+ tokens in the wrong range");
            return -1;
        }
        /* the term itself, then each of its shorter starts as a prefix (unless a term itself) */
        CueSlot *slot = cue_slot(self, keys[i]);
        slot->key = keys[i];
        slot->group = (int32_t)groups[i];
        for (int shorter = length - 1; shorter >= 2; shorter--) {
            packed /= self->base;
            int64_t key = packed + self->cue_offsets[shorter - 1];
            slot = cue_slot(self, key);
            if (slot->key == -1) slot->key = key; /* group stays -2 */
        }
    }
    return 0;
}

static int Scanner_init(Scanner *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"token_index", "base", "unigram_group", "starts_ngram", "continues_ngram",
                            "ngram_keys", "ngram_group", "groups", "max_cue_tokens", "ask_head", "ask_tail",
                            "vocab", "order", "unigram_column", "gram_keys", "idf_weight",
                            "idf_squared", "intercept", "math_symbols", "difficulty", "size_unit",
                            "log1p_table", "size_units", "requested_size", "log1p_counts", "gain_trees", NULL};
    PyObject *index, *unigram_group, *starts, *continues, *ngram_keys, *ngram_group;
    PyObject *unigram_column_obj, *gram_keys, *idf_weight_obj, *idf_squared_obj, *math_symbols;
    PyObject *difficulty, *log1p_table, *size_units, *requested_size, *log1p_counts;
    PyObject *gain_trees = Py_None;
    Py_ssize_t size_unit;
    long long base, vocab;
    int max_cue_tokens, order;
    Py_ssize_t groups, ask_head, ask_tail;
    double intercept;
    if (self->short_slots != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Scanner is immutable");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OLOOOOOninnLiOOOOdUO!nOOOO|O", names, &index,
                                     &base, &unigram_group, &starts, &continues, &ngram_keys,
                                     &ngram_group, &groups, &max_cue_tokens, &ask_head, &ask_tail, &vocab,
                                     &order, &unigram_column_obj, &gram_keys, &idf_weight_obj,
                                     &idf_squared_obj, &intercept, &math_symbols, &DifficultyType,
                                     &difficulty, &size_unit, &log1p_table, &size_units, &requested_size,
                                     &log1p_counts, &gain_trees))
        return -1;
    if (!PyCallable_Check(requested_size) || !PyCallable_Check(log1p_counts)) {
        PyErr_SetString(PyExc_TypeError, "requested_size and log1p_counts must be callable");
        return -1;
    }
    if (((Difficulty *)difficulty)->features != STRUCTURE_FEATURES + 2 * groups || size_unit < 0 ||
        size_unit >= groups) {
        PyErr_SetString(PyExc_ValueError, "the difficulty head does not fit these features");
        return -1;
    }
    if (gain_trees != Py_None &&
        (!PyObject_TypeCheck(gain_trees, &DifficultyType) ||
         ((Difficulty *)gain_trees)->features != ((Difficulty *)difficulty)->features + 1)) {
        PyErr_SetString(PyExc_ValueError, "gain_trees must be a Difficulty on the difficulty features + 1");
        return -1;
    }
    self->difficulty = (Difficulty *)Py_NewRef(difficulty);
    self->gain_trees = gain_trees == Py_None ? NULL : (Difficulty *)Py_NewRef(gain_trees);
    self->size_units = PyTuple_New(0);
    PyObject *units = PySequence_Fast(size_units, "size_units must be a sequence of str");
    if (self->size_units == NULL || units == NULL) {
        Py_XDECREF(units);
        return -1;
    }
    Py_SETREF(self->size_units, PyTuple_New(PySequence_Fast_GET_SIZE(units)));
    if (self->size_units == NULL) {
        Py_DECREF(units);
        return -1;
    }
    memset(self->unit_pair, 0, sizeof(self->unit_pair));
    for (Py_ssize_t u = 0; u < PySequence_Fast_GET_SIZE(units); u++) {
        PyObject *unit = PySequence_Fast_GET_ITEM(units, u);
        PyObject *utf8 = PyUnicode_Check(unit) ? PyUnicode_AsUTF8String(unit) : NULL;
        if (utf8 == NULL || PyBytes_GET_SIZE(utf8) < 2) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "size units must be str of 2+ bytes");
            Py_XDECREF(utf8);
            Py_DECREF(units);
            return -1;
        }
        const unsigned char *start = (const unsigned char *)PyBytes_AS_STRING(utf8);
        unsigned pair = (unsigned)start[0] << 8 | start[1];
        self->unit_pair[pair / 8] |= (uint8_t)(1 << (pair % 8));
        PyTuple_SET_ITEM(self->size_units, u, utf8);
    }
    Py_DECREF(units);
    self->requested_size = Py_NewRef(requested_size);
    self->log1p_counts = Py_NewRef(log1p_counts);
    self->size_unit = size_unit;
    self->log1p_table = copy_buffer(log1p_table, 8, &self->log1p_size, "log1p_table");
    if (self->log1p_table == NULL) return -1;
    /* the lexical head's n-grams are at most bigrams here (the shipped model's); longer ones
     * stay with numpy (extproc.complexity.native checks) */
    if (groups < 1 || groups > 127 || max_cue_tokens < 2 || max_cue_tokens > MAX_ORDER || order < 1 ||
        order > 2 || base < 1 || base >= INT32_MAX || vocab < 1 || vocab > base || vocab >= 65536) {
        PyErr_SetString(PyExc_ValueError, "unsupported model shape");
        return -1;
    }
    Py_ssize_t n, groups_n, keys_n, idf_n, idf2_n, column_n, unigrams = 0;
    self->base = base;
    self->vocab = vocab;
    self->order = order;
    int64_t *unigram_column = copy_buffer(unigram_column_obj, 8, &column_n, "unigram_column");
    double *idf_weight = NULL, *idf_squared = NULL;
    if (unigram_column == NULL) return -1;
    idf_weight = copy_buffer(idf_weight_obj, 8, &idf_n, "idf_weight");
    if (idf_weight == NULL) goto fail;
    idf_squared = copy_buffer(idf_squared_obj, 8, &idf2_n, "idf_squared");
    if (idf_squared == NULL) goto fail;
    if (column_n != vocab || idf_n != idf2_n || idf_n >= INT32_MAX) goto shape;
    for (Py_ssize_t i = 0; i < vocab; i++) {
        if (unigram_column[i] >= idf_n) goto shape;
        if (unigram_column[i] >= 0) unigrams++; /* the unigram columns come first, the bigrams' follow */
    }
    self->columns = idf_n;
    for (int count = 1; count < 64; count++) self->tf[count] = 1.0 + log((double)count);
    self->idf = PyMem_Malloc((size_t)(idf_n > 0 ? 2 * idf_n : 1) * sizeof(double));
    if (self->idf == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < idf_n; i++) {
        self->idf[2 * i] = idf_weight[i];
        self->idf[2 * i + 1] = idf_squared[i];
    }
    if (build_token_table(self, index, unigram_column) < 0) goto fail;
    if (build_bigrams(self, gram_keys, unigrams) < 0) goto fail;
    PyMem_Free(unigram_column);
    PyMem_Free(idf_weight);
    PyMem_Free(idf_squared);
    unigram_column = NULL;
    idf_weight = idf_squared = NULL;
    self->intercept = intercept;
    /* the three per-token cue tables as one (one cache line per token, not three) */
    Py_ssize_t starts_n, continues_n;
    int8_t *group_of = copy_buffer(unigram_group, 1, &n, "unigram_group");
    uint8_t *starts_of = group_of == NULL ? NULL : copy_buffer(starts, 1, &starts_n, "starts_ngram");
    uint8_t *continues_of = starts_of == NULL ? NULL : copy_buffer(continues, 1, &continues_n, "continues_ngram");
    self->cue_info = continues_of == NULL ? NULL : PyMem_Malloc((size_t)base * sizeof(uint16_t));
    int fits = self->cue_info != NULL && n == base && starts_n == base && continues_n == base;
    for (Py_ssize_t i = 0; fits && i < base; i++) {
        fits = group_of[i] < groups;
        self->cue_info[i] = (uint16_t)((group_of[i] >= 0 ? group_of[i] + 1 : 0) | (starts_of[i] ? STARTS_CUE : 0) |
                                       (continues_of[i] ? CONTINUES_CUE : 0));
    }
    PyMem_Free(group_of);
    PyMem_Free(starts_of);
    PyMem_Free(continues_of);
    if (self->cue_info == NULL) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        return -1;
    }
    if (!fits) goto shape;
    self->max_cue_tokens = max_cue_tokens;
    int64_t power = 1; /* base ** max_cue_tokens, checked by the Python side to fit */
    for (int i = 0; i < max_cue_tokens; i++) power *= base;
    for (int length = 1; length <= max_cue_tokens; length++) self->cue_offsets[length - 1] = (length - 1) * power;
    self->groups = groups;
    int64_t *keys = copy_buffer(ngram_keys, 8, &keys_n, "ngram_keys");
    if (keys == NULL) return -1;
    int64_t *key_groups = copy_buffer(ngram_group, 8, &groups_n, "ngram_group");
    int built = key_groups == NULL ? -1 : build_cues(self, keys, key_groups, keys_n, groups_n);
    PyMem_Free(keys);
    PyMem_Free(key_groups);
    if (built < 0) return -1;
    self->ask_head = ask_head;
    self->ask_tail = ask_tail;
    Py_ssize_t symbols = PyUnicode_GET_LENGTH(math_symbols);
    self->math_symbol_limit = 0;
    for (Py_ssize_t i = 0; i < symbols; i++) {
        Py_UCS4 point = PyUnicode_READ_CHAR(math_symbols, i);
        if (point + 1 > self->math_symbol_limit) self->math_symbol_limit = point + 1;
    }
    self->math_symbols = PyMem_Calloc(self->math_symbol_limit / 8 + 1, 1);
    if (self->math_symbols == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < symbols; i++) {
        Py_UCS4 point = PyUnicode_READ_CHAR(math_symbols, i);
        self->math_symbols[point / 8] |= (uint8_t)(1 << (point % 8));
    }
    return 0;
shape:
    PyErr_SetString(PyExc_ValueError, "model tables of inconsistent sizes");
fail:
    PyMem_Free(unigram_column);
    PyMem_Free(idf_weight);
    PyMem_Free(idf_squared);
    return -1;
}

/* Scratch for the ids and unigram columns of `tokens` tokens. */
static int reserve(Scanner *self, Py_ssize_t tokens) {
    if (tokens > self->ids_capacity) {
        Py_ssize_t size = tokens < 1024 ? 1024 : tokens;
        int32_t *ids = PyMem_Realloc(self->ids, (size_t)size * sizeof(int32_t));
        if (ids != NULL) self->ids = ids;
        int32_t *columns = PyMem_Realloc(self->unigram_columns, (size_t)size * sizeof(int32_t));
        if (columns != NULL) self->unigram_columns = columns;
        const double **idf = PyMem_Realloc(self->unigram_idf, (size_t)size * sizeof(double *));
        if (idf != NULL) self->unigram_idf = idf;
        int32_t *starts = PyMem_Realloc(self->token_start, (size_t)size * sizeof(int32_t));
        if (starts != NULL) self->token_start = starts;
        int32_t *lengths = PyMem_Realloc(self->token_length, (size_t)size * sizeof(int32_t));
        if (lengths != NULL) self->token_length = lengths;
        uint64_t *keys = PyMem_Realloc(self->token_key, (size_t)size * sizeof(uint64_t));
        if (keys != NULL) self->token_key = keys;
        if (ids == NULL || columns == NULL || idf == NULL || starts == NULL || lengths == NULL || keys == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->ids_capacity = size;
    }
    return 0;
}

/* A count table for the n-grams of `tokens` tokens, at most a quarter full: its size (a power of
 * two; the table may be larger, its slots past that size stay empty). */
static Py_ssize_t reserve_counts(Scanner *self, Py_ssize_t tokens) {
    Py_ssize_t needed = 4 * (tokens * self->order + 1), size = 64;
    while (size < needed) size <<= 1;
    if (size > self->counts_capacity) {
        ColumnCount *counts = PyMem_Malloc((size_t)size * sizeof(ColumnCount));
        int32_t *touched = PyMem_Malloc((size_t)(size / 2) * sizeof(int32_t));
        if (counts == NULL || touched == NULL) {
            PyMem_Free(counts);
            PyMem_Free(touched);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < size; i++) counts[i].column = -1;
        PyMem_Free(self->counts);
        PyMem_Free(self->touched);
        self->counts = counts;
        self->touched = touched;
        self->counts_capacity = size;
    }
    return size;
}

/* The tokens of a prepared text's UTF-8 bytes (lexical.tokens: maximal runs of [a-z0-9], and
 * single characters, a lead byte with its continuation bytes; other bytes separate), their ids
 * and unigram columns into the scratch arrays; returns how many, or -1 with an exception set. */
static Py_ssize_t tokenize(Scanner *self, const unsigned char *s, Py_ssize_t n) {
    if (n >= INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "text too long");
        return -1;
    }
    if (reserve(self, n) < 0) return -1;
    int32_t *starts = self->token_start, *lengths = self->token_length;
    uint64_t *keys = self->token_key;
    /* first the tokens, then their lookups, each slot fetched ahead of its use: the table is
     * mostly not in the cache, and the misses overlap */
    Py_ssize_t count = 0, i = 0;
    while (i < n) {
        unsigned char c = s[i];
        Py_ssize_t start = i;
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
            i++;
            while (i < n && ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9'))) i++;
        } else if (c >= 0xC0) {
            i++;
            while (i < n && s[i] >= 0x80 && s[i] < 0xC0) i++;
        } else {
            i++; /* other ASCII, and a continuation byte without its lead (not in valid UTF-8) */
            continue;
        }
        starts[count] = (int32_t)start;
        lengths[count] = (int32_t)(i - start);
        keys[count] = i - start <= PACKED_BYTES ? pack(s + start, i - start) : 0;
        count++;
    }
    for (Py_ssize_t t = 0; t < count; t++) {
        if (t + PREFETCH_AHEAD < count && keys[t + PREFETCH_AHEAD])
            __builtin_prefetch(&self->short_slots[short_slot(self, keys[t + PREFETCH_AHEAD])]);
        look_up(self, s + starts[t], lengths[t], keys[t], &self->ids[t], &self->unigram_columns[t],
                &self->unigram_idf[t]);
    }
    return count;
}

/* FeatureExtractor.cue_counts: per group the matches in the text, then per group those in its ask. */
static void count_cues(const Scanner *self, Py_ssize_t n, Py_ssize_t *counts) {
    const int32_t *ids = self->ids;
    Py_ssize_t groups = self->groups;
    memset(counts, 0, 2 * (size_t)groups * sizeof(Py_ssize_t));
    Py_ssize_t tail = n - self->ask_tail;
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        unsigned info = self->cue_info[id];
        int group = (int)(info & 0xFF) - 1;
        int in_ask = i < self->ask_head || i >= tail;
        if (group >= 0) {
            counts[group]++;
            if (in_ask) counts[groups + group]++;
        }
        if (i + 1 < n && (info & STARTS_CUE) && (self->cue_info[ids[i + 1]] & CONTINUES_CUE)) {
            /* the 2- to max-token windows from here; past the end, a window reads token 0 */
            int64_t key = id;
            for (int length = 2; length <= self->max_cue_tokens; length++) {
                key = key * self->base + (i + length - 1 < n ? ids[i + length - 1] : 0);
                const CueSlot *found = cue_slot(self, key + self->cue_offsets[length - 1]);
                if (found->key == -1) break; /* no cue starts so */
                if (found->group >= 0) {
                    counts[found->group]++;
                    if (in_ask) counts[groups + found->group]++;
                }
            }
        }
    }
}

static PyObject *list_of_counts(const Py_ssize_t *counts, Py_ssize_t n) {
    PyObject *out = PyList_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t g = 0; g < n; g++) {
        PyObject *value = PyLong_FromSsize_t(counts[g]);
        if (value == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, g, value);
    }
    return out;
}

static inline void count_column(Scanner *self, uint64_t mask, int32_t column, const double *idf,
                                Py_ssize_t *touched) {
    uint64_t slot = ((uint64_t)column * 0x9E3779B97F4A7C15ULL >> 32) & mask;
    for (;;) {
        ColumnCount *c = &self->counts[slot];
        if (c->column == column) {
            c->count++;
            return;
        }
        if (c->column == -1) {
            c->column = column;
            c->count = 1;
            c->idf = idf;
            self->touched[(*touched)++] = (int32_t)slot;
            return;
        }
        slot = (slot + 1) & mask;
    }
}

/* LexicalModel.raw_of_ids on the scratch tokens: Σ tf·idf·w / sqrt(Σ (tf·idf)²) + intercept,
 * tf = 1 + log(count) per column present. */
static double gain_raw(Scanner *self, Py_ssize_t n) {
    const int32_t *ids = self->ids, *columns = self->unigram_columns;
    const double **unigram_idf = self->unigram_idf;
    int32_t vocab = (int32_t)self->vocab;
    Py_ssize_t touched = 0, size = reserve_counts(self, n);
    if (size < 0) return NAN;
    uint64_t mask = (uint64_t)size - 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t ahead = i + PREFETCH_AHEAD;
        if (self->order == 2 && ahead + 1 < n) {
            int32_t a = ids[ahead] < vocab ? ids[ahead] : 0, b = ids[ahead + 1] < vocab ? ids[ahead + 1] : 0;
            if (self->starts_bigram[a])
                __builtin_prefetch(&self->bigrams[bigram_slot(self, (uint32_t)a * (uint32_t)vocab + (uint32_t)b)]);
        }
        if (columns[i] >= 0) count_column(self, mask, columns[i], unigram_idf[i], &touched);
        if (self->order == 2 && i + 1 < n) {
            int32_t a = ids[i] < vocab ? ids[i] : 0, b = ids[i + 1] < vocab ? ids[i + 1] : 0;
            if (self->starts_bigram[a]) {
                const BigramSlot *bigram = find_bigram(self, a, b);
                if (bigram != NULL) count_column(self, mask, bigram->column, bigram->idf, &touched);
            }
        }
    }
    if (touched == 0) return self->intercept;
    double dot = 0.0, norm = 0.0;
    for (Py_ssize_t j = 0; j < touched; j++) {
        ColumnCount *c = &self->counts[self->touched[j]];
        double tf = c->count < 64 ? self->tf[c->count] : 1.0 + log((double)c->count);
        const double *idf = c->idf;
        dot += tf * idf[0];
        norm += tf * tf * idf[1];
        c->column = -1;
    }
    return dot / sqrt(norm) + self->intercept;
}

static inline int is_math_symbol(const Scanner *self, Py_UCS4 point) {
    return point < self->math_symbol_limit && (self->math_symbols[point / 8] >> (point % 8)) & 1;
}

/* The code point of the character whose first byte is s[i], and its length in bytes (a
 * continuation byte without its lead: itself, one byte; never in the scorer's valid UTF-8). */
static Py_UCS4 decode_at(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, Py_ssize_t *length) {
    unsigned char b = s[i];
    int extra = b < 0xC0 ? 0 : b >= 0xF0 ? 3 : b >= 0xE0 ? 2 : 1;
    Py_UCS4 point = extra ? b & (0x3F >> extra) : b;
    int k = 1;
    for (; k <= extra && i + k < n; k++) point = (point << 6) | (s[i + k] & 0x3F);
    *length = k;
    return point;
}

/* features.text_counts of a prepared text's UTF-8 bytes, in its order. */
static void count_text(const Scanner *self, const unsigned char *s, Py_ssize_t n, Py_ssize_t *c) {
    memset(c, 0, COUNTS * sizeof(Py_ssize_t));
    Py_ssize_t paragraph = -1, backticks = 0, ask_non_ascii_bytes = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char b = s[i];
        if (b != '`') {
            c[FENCES] += backticks / 3; /* str.count: non-overlapping */
            backticks = 0;
        }
        if (b >= 0x80) {
            /* a character (the text is valid UTF-8, surrogates passed), then on past it */
            Py_ssize_t length = 1;
            if (b >= 0xC0) {
                Py_UCS4 point = decode_at(s, n, i, &length);
                c[MATH] += is_math_symbol(self, point);
                c[QUESTIONS] += point == 0xFF1F; /* the full-width question mark */
            }
            c[NON_ASCII_BYTES] += length;
            i += length - 1;
            continue;
        }
        switch (b) {
        case '{': case '}': case ';': case '=': case '<': case '>': case '[': case ']': case '(':
        case ')': case '_': case '#':
            c[CODE]++;
            break;
        case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7': case '8':
        case '9':
            c[DIGITS]++;
            break;
        case '^':
            c[CARETS]++;
            break;
        case '\\':
            c[BACKSLASHES]++;
            break;
        case '?':
            c[QUESTIONS]++;
            break;
        case ' ':
            c[SPACES]++;
            break;
        case '`':
            backticks++;
            break;
        case '\n':
            c[NEWLINES]++;
            if (i + 1 < n && s[i + 1] == '\n' && paragraph < 0) {
                paragraph = i;
                ask_non_ascii_bytes = c[NON_ASCII_BYTES];
            }
            if (i + 2 < n && (s[i + 1] == '-' || s[i + 1] == '*') && s[i + 2] == ' ') c[LIST_MARKS]++;
            else if (i + 3 < n && s[i + 1] == 0xE2 && s[i + 2] == 0x80 && s[i + 3] == 0xA2) c[LIST_MARKS]++;
            break;
        }
    }
    c[FENCES] += backticks / 3;
    if (paragraph < 0) {
        paragraph = n;
        ask_non_ascii_bytes = c[NON_ASCII_BYTES];
    }
    c[ASK_BYTES] = paragraph;
    c[ASK_NON_ASCII] = ask_non_ascii_bytes > 0;
    c[PASTED_NON_ASCII] = c[NON_ASCII_BYTES] > ask_non_ascii_bytes;
}

/* '.', ')', U+3001 or U+FF09 at s[k]: what closes a numbered item. */
static int closes_item(const unsigned char *s, Py_ssize_t n, Py_ssize_t k) {
    if (k >= n) return 0;
    if (s[k] == '.' || s[k] == ')') return 1;
    return k + 2 < n && ((s[k] == 0xE3 && s[k + 1] == 0x80 && s[k + 2] == 0x81) ||
                         (s[k] == 0xEF && s[k + 1] == 0xBC && s[k + 2] == 0x89));
}

/* features.numbered_items: the matches of `\n[ \t]*(?:\d{1,2}|[a-z])[.)\u3001\uff09]` (each
 * holds one line break, its first character, so they never overlap; \d is any Unicode decimal). */
static Py_ssize_t numbered_items(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] != '\n') continue;
        Py_ssize_t j = i + 1, first, second;
        while (j < n && (s[j] == ' ' || s[j] == '\t')) j++;
        if (j >= n) break;
        if (s[j] >= 'a' && s[j] <= 'z') {
            count += closes_item(s, n, j + 1);
            continue;
        }
        if (!Py_UNICODE_ISDECIMAL(decode_at(s, n, j, &first))) continue;
        Py_ssize_t k = j + first; /* two digits, else one */
        if (k < n && Py_UNICODE_ISDECIMAL(decode_at(s, n, k, &second)) && closes_item(s, n, k + second)) count++;
        else count += closes_item(s, n, k);
    }
    return count;
}

/* True wherever features.may_request_size is (and perhaps elsewhere): a size unit starts after
 * spaces and hyphens that follow a character of [\d,.]. */
static int may_request_size(const Scanner *self, const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t units = PyTuple_GET_SIZE(self->size_units);
    for (Py_ssize_t i = 0; i + 1 < n; i++) {
        unsigned pair = (unsigned)s[i] << 8 | s[i + 1];
        if (!((self->unit_pair[pair / 8] >> (pair % 8)) & 1)) continue;
        int found = 0;
        for (Py_ssize_t u = 0; u < units && !found; u++) {
            PyObject *unit = PyTuple_GET_ITEM(self->size_units, u);
            Py_ssize_t length = PyBytes_GET_SIZE(unit);
            found = i + length <= n && memcmp(s + i, PyBytes_AS_STRING(unit), (size_t)length) == 0;
        }
        if (!found) continue;
        for (Py_ssize_t p = i; p > 0;) { /* back over the characters before the unit */
            Py_ssize_t start = p - 1, length;
            while (start > 0 && (s[start] & 0xC0) == 0x80) start--;
            Py_UCS4 c = decode_at(s, n, start, &length);
            if (c == ',' || c == '.' || Py_UNICODE_ISDECIMAL(c)) return 1;
            if (c != '-' && !Py_UNICODE_ISSPACE(c)) break;
            p = start;
        }
    }
    return 0;
}

/* A Python function's result as a double (an int or a float), or -1 with an exception set. */
static double call_for_number(PyObject *function, PyObject *argument) {
    PyObject *result = PyObject_CallOneArg(function, argument);
    if (result == NULL) return -1.0;
    double value = PyFloat_AsDouble(result);
    Py_DECREF(result);
    return value;
}

/* FeatureExtractor.features_of_counts of a prepared text (`text`, its UTF-8 bytes `s`) into x,
 * and the lexical head's raw output into *gain if not NULL; -1 with an exception set on errors.
 * The scratch arrays are done with before Python code is called (another thread may run then). */
static int compute_features(Scanner *self, PyObject *text, const unsigned char *s, Py_ssize_t n, double turns,
                            double context_tokens, double system_tokens, double *x, double *gain) {
    Py_ssize_t c[COUNTS], cues[256];
    count_text(self, s, n, c);
    Py_ssize_t tokens = tokenize(self, s, n);
    if (tokens < 0) return -1;
    count_cues(self, tokens, cues);
    if (gain != NULL) {
        *gain = gain_raw(self, tokens);
        if (PyErr_Occurred()) return -1;
    }
    Py_ssize_t length_chars = PyUnicode_GET_LENGTH(text);
    double chars = (double)(length_chars > 1 ? length_chars : 1);
    double size_bytes = (double)n;
    int ascii_text = c[NON_ASCII_BYTES] == 0;
    /* each as features.FeatureExtractor.structure computes it, operation for operation */
    double length = log1p(ascii_text ? size_bytes / 4.0 : size_bytes / 3.0);
    double ask_bytes = (double)c[ASK_BYTES], pasted_bytes = (double)(n - c[ASK_BYTES]);
    double ask_tokens = c[ASK_NON_ASCII] ? ask_bytes / 3.0 : ask_bytes / 4.0;
    double pasted_tokens = c[PASTED_NON_ASCII] ? pasted_bytes / 3.0 : pasted_bytes / 4.0;
    Py_ssize_t math_chars = c[CARETS] + c[MATH];
    double size = 0.0;
    if (c[DIGITS] && cues[self->size_unit] && may_request_size(self, s, n)) {
        size = call_for_number(self->requested_size, text);
        if (size == -1.0 && PyErr_Occurred()) return -1;
    }
    Py_ssize_t list_items = 0; /* every kind of item starts a line: none without a line break */
    if (c[NEWLINES]) list_items = numbered_items(s, n) + c[LIST_MARKS];
    Py_ssize_t non_ascii = ascii_text ? 0 : length_chars - (n - c[NON_ASCII_BYTES]);
    double fences = (double)c[FENCES] / 2.0;
    x[0] = length;
    x[1] = length * length;
    x[2] = log1p((double)c[NEWLINES]);
    x[3] = log1p(ask_tokens);
    x[4] = log1p(pasted_tokens);
    x[5] = fences < 4.0 ? fences : 4.0;
    x[6] = 10.0 * (double)c[CODE] / chars;
    x[7] = math_chars ? 10.0 * (double)math_chars / chars : 0.0;
    x[8] = log1p((double)c[BACKSLASHES]);
    x[9] = 10.0 * (double)c[DIGITS] / chars;
    x[10] = log1p((double)c[QUESTIONS]);
    x[11] = log1p((double)list_items);
    x[12] = log1p(size < 100000.0 ? size : 100000.0);
    x[13] = non_ascii ? (double)non_ascii / (double)(non_ascii + c[SPACES] + 1) : 0.0;
    x[14] = log1p(turns > 1.0 ? turns - 1.0 : 0.0);
    x[15] = log1p(context_tokens);
    x[16] = log1p(system_tokens);
    /* the cue counts' np.log1p: by table, or (a count past it) by numpy for them all */
    Py_ssize_t cue_count = 2 * self->groups, largest = 0;
    for (Py_ssize_t g = 0; g < cue_count; g++)
        if (cues[g] > largest) largest = cues[g];
    if (largest < self->log1p_size) {
        for (Py_ssize_t g = 0; g < cue_count; g++) x[STRUCTURE_FEATURES + g] = self->log1p_table[cues[g]];
        return 0;
    }
    PyObject *counts = list_of_counts(cues, cue_count);
    PyObject *logs = counts == NULL ? NULL : PyObject_CallOneArg(self->log1p_counts, counts);
    Py_XDECREF(counts);
    PyObject *seq = logs == NULL ? NULL : PySequence_Fast(logs, "log1p_counts must return a sequence");
    Py_XDECREF(logs);
    if (seq == NULL) return -1;
    if (PySequence_Fast_GET_SIZE(seq) != cue_count) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "log1p_counts returned the wrong number of values");
        return -1;
    }
    for (Py_ssize_t g = 0; g < cue_count; g++) {
        x[STRUCTURE_FEATURES + g] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, g));
    }
    Py_DECREF(seq);
    return PyErr_Occurred() ? -1 : 0;
}

static PyObject *tuple_of_counts(const Py_ssize_t *counts, Py_ssize_t n) {
    PyObject *list = list_of_counts(counts, n);
    if (list == NULL) return NULL;
    PyObject *out = PyList_AsTuple(list);
    Py_DECREF(list);
    return out;
}

static int read_bytes(PyObject *arg, Py_buffer *view) {
    return PyObject_GetBuffer(arg, view, PyBUF_SIMPLE);
}

static PyObject *Scanner_scan(Scanner *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "scan(raw, with_gain)");
        return NULL;
    }
    int with_gain = PyObject_IsTrue(args[1]);
    if (with_gain < 0) return NULL;
    Py_buffer view;
    if (read_bytes(args[0], &view) < 0) return NULL;
    Py_ssize_t c[COUNTS], cues[256];
    count_text(self, view.buf, view.len, c);
    Py_ssize_t n = tokenize(self, view.buf, view.len);
    PyBuffer_Release(&view);
    if (n < 0) return NULL;
    count_cues(self, n, cues);
    double raw = with_gain ? gain_raw(self, n) : NAN;
    if (PyErr_Occurred()) return NULL;
    PyObject *cue_list = list_of_counts(cues, 2 * self->groups);
    PyObject *text_tuple = cue_list == NULL ? NULL : tuple_of_counts(c, COUNTS);
    if (text_tuple == NULL) {
        Py_XDECREF(cue_list);
        return NULL;
    }
    return Py_BuildValue("(NdN)", cue_list, raw, text_tuple);
}

/* The arguments of `features` and `score`: text, raw, turns, context tokens, system tokens. */
static int prompt_arguments(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t expected, Py_buffer *view,
                            double *numbers) {
    if (nargs != expected || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "expected (text, raw, turns, context_tokens, system_tokens, ...)");
        return -1;
    }
    for (int k = 0; k < 3; k++) {
        numbers[k] = PyFloat_AsDouble(args[2 + k]);
        if (numbers[k] == -1.0 && PyErr_Occurred()) return -1;
    }
    return read_bytes(args[1], view);
}

static PyObject *Scanner_features(Scanner *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer view;
    double numbers[3];
    if (prompt_arguments(args, nargs, 5, &view, numbers) < 0) return NULL;
    double x[STRUCTURE_FEATURES + 256];
    int done = compute_features(self, args[0], view.buf, view.len, numbers[0], numbers[1], numbers[2], x, NULL);
    PyBuffer_Release(&view);
    if (done < 0) return NULL;
    Py_ssize_t count = self->difficulty->features;
    PyObject *out = PyList_New(count);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *value = PyFloat_FromDouble(x[i]);
        if (value == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, value);
    }
    return out;
}

/* features.numbers_before_choices on the prepared text's UTF-8 bytes: runs of ASCII digits before
 * the first "\n[ \t]*[a-z][.)]" (UTF-8 continuation bytes are never ASCII, so bytes match as
 * characters do). */
static Py_ssize_t numbers_before_choices(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t numbers = 0;
    int in_number = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        int digit = c >= '0' && c <= '9';
        numbers += digit && !in_number;
        in_number = digit;
        if (c == '\n') {
            Py_ssize_t j = i + 1;
            while (j < n && (s[j] == ' ' || s[j] == '\t')) j++;
            if (j + 1 < n && s[j] >= 'a' && s[j] <= 'z' && (s[j + 1] == '.' || s[j + 1] == ')')) break;
        }
    }
    return numbers;
}

static PyObject *Scanner_score(Scanner *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer view;
    double numbers[3];
    if (prompt_arguments(args, nargs, 6, &view, numbers) < 0) return NULL;
    int with_gain = PyObject_IsTrue(args[5]);
    if (with_gain < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    double x[STRUCTURE_FEATURES + 256 + 1], raw = NAN, correction = 0.0;
    int done = compute_features(self, args[0], view.buf, view.len, numbers[0], numbers[1], numbers[2], x,
                                with_gain ? &raw : NULL);
    if (done >= 0 && self->gain_trees != NULL) {
        x[self->difficulty->features] = (double)numbers_before_choices(view.buf, view.len);
        correction = difficulty_level(self->gain_trees, x);
    }
    PyBuffer_Release(&view);
    if (done < 0) return NULL;
    return Py_BuildValue("(ddd)", difficulty_level(self->difficulty, x), raw, correction);
}

static PyObject *Scanner_gain(Scanner *self, PyObject *arg) {
    Py_buffer view;
    if (read_bytes(arg, &view) < 0) return NULL;
    Py_ssize_t n = tokenize(self, view.buf, view.len);
    PyBuffer_Release(&view);
    if (n < 0) return NULL;
    double raw = gain_raw(self, n);
    return PyErr_Occurred() ? NULL : PyFloat_FromDouble(raw);
}

static PyObject *Scanner_numbers(Scanner *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (read_bytes(arg, &view) < 0) return NULL;
    Py_ssize_t numbers = numbers_before_choices(view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(numbers);
}

static PyObject *Scanner_ids(Scanner *self, PyObject *arg) {
    Py_buffer view;
    if (read_bytes(arg, &view) < 0) return NULL;
    Py_ssize_t n = tokenize(self, view.buf, view.len);
    PyBuffer_Release(&view);
    if (n < 0) return NULL;
    PyObject *out = PyList_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value = PyLong_FromLong(self->ids[i]);
        if (value == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, value);
    }
    return out;
}

static PyMethodDef Scanner_methods[] = {
    {"scan", (PyCFunction)(void (*)(void))Scanner_scan, METH_FASTCALL,
     "scan(raw, with_gain) -> (cue counts, lexical head's raw output or nan, text counts)"},
    {"features", (PyCFunction)(void (*)(void))Scanner_features, METH_FASTCALL,
     "features(text, raw, turns, context_tokens, system_tokens) -> the difficulty features"},
    {"score", (PyCFunction)(void (*)(void))Scanner_score, METH_FASTCALL,
     "score(text, raw, turns, context_tokens, system_tokens, with_gain) -> (level, lexical raw or nan, "
     "the gain trees' correction or 0)"},
    {"numbers", (PyCFunction)Scanner_numbers, METH_O, "numbers(raw) -> numbers_before_choices"},
    {"gain", (PyCFunction)Scanner_gain, METH_O, "gain(raw) -> the lexical head's raw output"},
    {"ids", (PyCFunction)Scanner_ids, METH_O, "ids(raw) -> the token ids"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "extproc.complexity._native.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Token ids, cue counts and the lexical head of a prepared prompt's UTF-8 bytes.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_methods = Scanner_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_native",
    .m_doc = "The complexity scorer's inner loops (see _native.c).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&ScannerType) < 0 || PyType_Ready(&DifficultyType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Scanner", (PyObject *)&ScannerType) < 0 ||
        PyModule_AddObjectRef(m, "Difficulty", (PyObject *)&DifficultyType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
