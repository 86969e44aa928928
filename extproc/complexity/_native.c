/* The complexity scorer's per-token loops in C: one pass over a prepared prompt's UTF-8 bytes
 * yields its token ids, the cue counts of the difficulty features and the strong_gain head's raw
 * output; a second call runs the difficulty head (ridge + trees) on the feature vector.
 *
 * The numpy code in features.py / lexical.py / scorer.py is the definition; this module computes
 * the same numbers (tests/complexity/test_native.py compares them on every fixture prompt). All
 * tables are copied in at model load; a call allocates nothing but its result and holds the GIL
 * throughout, so the scratch buffers of an object are never shared by two calls at once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ORDER 8

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

static uint64_t hash_key(int64_t key) {
    uint64_t h = (uint64_t)key * 0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 31);
}

static uint64_t table_size(Py_ssize_t entries) {
    uint64_t size = 16;
    while (size < (uint64_t)entries * 2) size <<= 1;
    return size;
}

/* ---- Scanner: token ids, cue counts, lexical head -------------------------------------------- */

typedef struct {
    uint64_t hash;
    uint32_t offset; /* into the token bytes */
    uint32_t length; /* 0: empty slot (no token is empty) */
    int64_t id;
} TokenSlot;

typedef struct {
    PyObject_HEAD
    /* token -> id */
    unsigned char *token_bytes;
    TokenSlot *tokens;
    uint64_t token_mask;
    /* cue groups */
    int64_t base;
    int8_t *unigram_group;  /* [base] */
    uint8_t *starts_ngram;  /* [base] */
    uint8_t *continues_ngram; /* [base] */
    int64_t *ngram_keys;    /* ascending, without a sentinel */
    int64_t *ngram_group;
    Py_ssize_t ngram_count;
    int max_cue_tokens;
    int64_t cue_offsets[MAX_ORDER]; /* [L - 1]: added to the packed key of an L-token cue */
    Py_ssize_t groups, ask_head, ask_tail;
    /* the lexical head */
    int64_t vocab; /* V: ids below it are the head's own */
    int order;
    int64_t gain_offsets[MAX_ORDER];
    int64_t *unigram_column; /* [V]: -1 none */
    int64_t *gram_keys;      /* open addressing: key of an n-gram (n >= 2), -1 empty */
    int64_t *gram_columns;
    uint64_t gram_mask;
    double *idf_weight, *idf_squared;
    Py_ssize_t columns;
    double intercept;
    /* scratch */
    int64_t *ids;
    Py_ssize_t ids_capacity;
    int32_t *column_count; /* [columns], all zero between calls */
    int64_t *touched;
    Py_ssize_t touched_capacity;
} Scanner;

static void Scanner_dealloc(Scanner *self) {
    PyMem_Free(self->token_bytes);
    PyMem_Free(self->tokens);
    PyMem_Free(self->unigram_group);
    PyMem_Free(self->starts_ngram);
    PyMem_Free(self->continues_ngram);
    PyMem_Free(self->ngram_keys);
    PyMem_Free(self->ngram_group);
    PyMem_Free(self->unigram_column);
    PyMem_Free(self->gram_keys);
    PyMem_Free(self->gram_columns);
    PyMem_Free(self->idf_weight);
    PyMem_Free(self->idf_squared);
    PyMem_Free(self->ids);
    PyMem_Free(self->column_count);
    PyMem_Free(self->touched);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int build_token_table(Scanner *self, PyObject *index) {
    if (!PyDict_Check(index)) {
        PyErr_SetString(PyExc_TypeError, "token_index must be a dict of bytes to int");
        return -1;
    }
    Py_ssize_t entries = PyDict_Size(index), total = 0, pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(index, &pos, &key, &value)) {
        if (!PyBytes_Check(key) || !PyLong_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "token_index must be a dict of bytes to int");
            return -1;
        }
        total += PyBytes_GET_SIZE(key);
    }
    if (total >= UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "token index too large");
        return -1;
    }
    uint64_t size = table_size(entries);
    self->token_bytes = PyMem_Malloc((size_t)total + 1);
    self->tokens = PyMem_Calloc(size, sizeof(TokenSlot));
    if (self->token_bytes == NULL || self->tokens == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->token_mask = size - 1;
    uint32_t offset = 0;
    pos = 0;
    while (PyDict_Next(index, &pos, &key, &value)) {
        Py_ssize_t length = PyBytes_GET_SIZE(key);
        if (length == 0) continue; /* no token is empty: never looked up */
        int64_t id = PyLong_AsLongLong(value);
        if (id == -1 && PyErr_Occurred()) return -1;
        const unsigned char *text = (const unsigned char *)PyBytes_AS_STRING(key);
        memcpy(self->token_bytes + offset, text, (size_t)length);
        uint64_t h = hash_bytes(text, length);
        uint64_t slot = h & self->token_mask;
        while (self->tokens[slot].length != 0) slot = (slot + 1) & self->token_mask;
        self->tokens[slot] = (TokenSlot){h, offset, (uint32_t)length, id};
        offset += (uint32_t)length;
    }
    return 0;
}

static inline int64_t token_id(const Scanner *self, const unsigned char *s, Py_ssize_t n) {
    uint64_t h = hash_bytes(s, n);
    uint64_t slot = h & self->token_mask;
    for (;;) {
        const TokenSlot *t = &self->tokens[slot];
        if (t->length == 0) return 0;
        if (t->hash == h && t->length == (uint32_t)n && memcmp(self->token_bytes + t->offset, s, (size_t)n) == 0)
            return t->id;
        slot = (slot + 1) & self->token_mask;
    }
}

static int build_gram_table(Scanner *self, PyObject *keys_obj, Py_ssize_t first_column) {
    Py_ssize_t count;
    int64_t *keys = copy_buffer(keys_obj, 8, &count, "gram_keys");
    if (keys == NULL) return -1;
    uint64_t size = table_size(count);
    self->gram_keys = PyMem_Malloc(size * sizeof(int64_t));
    self->gram_columns = PyMem_Malloc(size * sizeof(int64_t));
    if (self->gram_keys == NULL || self->gram_columns == NULL) {
        PyMem_Free(keys);
        PyErr_NoMemory();
        return -1;
    }
    self->gram_mask = size - 1;
    for (uint64_t i = 0; i < size; i++) self->gram_keys[i] = -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (keys[i] < 0) {
            PyMem_Free(keys);
            PyErr_SetString(PyExc_ValueError, "n-gram keys must not be negative");
            return -1;
        }
        uint64_t slot = hash_key(keys[i]) & self->gram_mask;
        while (self->gram_keys[slot] != -1) slot = (slot + 1) & self->gram_mask;
        self->gram_keys[slot] = keys[i];
        self->gram_columns[slot] = first_column + i;
    }
    PyMem_Free(keys);
    return 0;
}

static inline int64_t gram_column(const Scanner *self, int64_t key) {
    uint64_t slot = hash_key(key) & self->gram_mask;
    for (;;) {
        int64_t k = self->gram_keys[slot];
        if (k == key) return self->gram_columns[slot];
        if (k == -1) return -1;
        slot = (slot + 1) & self->gram_mask;
    }
}

static int Scanner_init(Scanner *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"token_index", "base", "unigram_group", "starts_ngram", "continues_ngram",
                            "ngram_keys", "ngram_group", "groups", "max_cue_tokens", "ask_head", "ask_tail",
                            "vocab", "order", "unigram_column", "gram_keys", "idf_weight",
                            "idf_squared", "intercept", NULL};
    PyObject *index, *unigram_group, *starts, *continues, *ngram_keys, *ngram_group;
    PyObject *unigram_column, *gram_keys, *idf_weight, *idf_squared;
    long long base, vocab;
    int max_cue_tokens, order;
    Py_ssize_t groups, ask_head, ask_tail;
    double intercept;
    if (self->tokens != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Scanner is immutable");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OLOOOOOninnLiOOOOd", names, &index, &base,
                                     &unigram_group, &starts, &continues, &ngram_keys, &ngram_group,
                                     &groups, &max_cue_tokens, &ask_head, &ask_tail, &vocab, &order,
                                     &unigram_column, &gram_keys, &idf_weight, &idf_squared, &intercept))
        return -1;
    if (groups < 1 || groups > 127 || max_cue_tokens < 1 || max_cue_tokens > MAX_ORDER || order < 1 || order > MAX_ORDER || base < 1 ||
        vocab < 1) {
        PyErr_SetString(PyExc_ValueError, "unsupported model shape");
        return -1;
    }
    if (build_token_table(self, index) < 0) return -1;
    Py_ssize_t n, groups_n, keys_n, column_n, idf_n, idf2_n;
    self->base = base;
    self->unigram_group = copy_buffer(unigram_group, 1, &n, "unigram_group");
    if (self->unigram_group == NULL) return -1;
    if (n != base) goto shape;
    self->starts_ngram = copy_buffer(starts, 1, &n, "starts_ngram");
    if (self->starts_ngram == NULL) return -1;
    if (n != base) goto shape;
    self->continues_ngram = copy_buffer(continues, 1, &n, "continues_ngram");
    if (self->continues_ngram == NULL) return -1;
    if (n != base) goto shape;
    self->ngram_keys = copy_buffer(ngram_keys, 8, &keys_n, "ngram_keys");
    if (self->ngram_keys == NULL) return -1;
    self->ngram_group = copy_buffer(ngram_group, 8, &groups_n, "ngram_group");
    if (self->ngram_group == NULL) return -1;
    if (groups_n != keys_n) goto shape;
    self->ngram_count = keys_n;
    self->max_cue_tokens = max_cue_tokens;
    int64_t power = 1; /* base ** max_cue_tokens, checked by the Python side to fit */
    for (int i = 0; i < max_cue_tokens; i++) power *= base;
    for (int length = 1; length <= max_cue_tokens; length++) self->cue_offsets[length - 1] = (length - 1) * power;
    self->groups = groups;
    for (Py_ssize_t i = 0; i < base; i++)
        if (self->unigram_group[i] >= groups) goto shape;
    for (Py_ssize_t i = 0; i < keys_n; i++)
        if (self->ngram_group[i] < 0 || self->ngram_group[i] >= groups) goto shape;
    self->ask_head = ask_head;
    self->ask_tail = ask_tail;
    self->vocab = vocab;
    self->order = order;
    power = 1;
    for (int i = 0; i < order; i++) power *= vocab;
    for (int length = 1; length <= order; length++) self->gain_offsets[length - 1] = (length - 1) * power;
    self->unigram_column = copy_buffer(unigram_column, 8, &n, "unigram_column");
    if (self->unigram_column == NULL) return -1;
    if (n != vocab) goto shape;
    self->idf_weight = copy_buffer(idf_weight, 8, &idf_n, "idf_weight");
    if (self->idf_weight == NULL) return -1;
    self->idf_squared = copy_buffer(idf_squared, 8, &idf2_n, "idf_squared");
    if (self->idf_squared == NULL) return -1;
    if (idf_n != idf2_n) goto shape;
    self->columns = idf_n;
    column_n = 0; /* the unigram columns come first: the longer n-grams' columns follow them */
    for (Py_ssize_t i = 0; i < vocab; i++)
        if (self->unigram_column[i] >= idf_n) goto shape;
        else if (self->unigram_column[i] >= 0) column_n++;
    if (build_gram_table(self, gram_keys, column_n) < 0) return -1;
    for (uint64_t i = 0; i <= self->gram_mask; i++)
        if (self->gram_keys[i] != -1 && self->gram_columns[i] >= idf_n) goto shape;
    self->intercept = intercept;
    self->column_count = PyMem_Calloc((size_t)(idf_n > 0 ? idf_n : 1), sizeof(int32_t));
    if (self->column_count == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
shape:
    PyErr_SetString(PyExc_ValueError, "model tables of inconsistent sizes");
    return -1;
}

static int reserve(int64_t **buffer, Py_ssize_t *capacity, Py_ssize_t needed) {
    if (needed <= *capacity) return 0;
    Py_ssize_t size = needed < 4096 ? 4096 : needed;
    int64_t *grown = PyMem_Realloc(*buffer, (size_t)size * sizeof(int64_t));
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *buffer = grown;
    *capacity = size;
    return 0;
}

/* The token ids of a prepared text's UTF-8 bytes (lexical.tokens: maximal runs of [a-z0-9], and
 * single characters, a lead byte with its continuation bytes; other bytes separate) into
 * self->ids; returns how many, or -1 with an exception set. */
static Py_ssize_t tokenize(Scanner *self, const unsigned char *s, Py_ssize_t n) {
    if (reserve(&self->ids, &self->ids_capacity, n) < 0) return -1;
    int64_t *ids = self->ids;
    Py_ssize_t count = 0, i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
            Py_ssize_t start = i++;
            while (i < n && ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9'))) i++;
            ids[count++] = token_id(self, s + start, i - start);
        } else if (c >= 0xC0) {
            Py_ssize_t start = i++;
            while (i < n && s[i] >= 0x80 && s[i] < 0xC0) i++;
            ids[count++] = token_id(self, s + start, i - start);
        } else {
            i++; /* other ASCII, and a continuation byte without its lead (not in valid UTF-8) */
        }
    }
    return count;
}

static int64_t find_cue(const Scanner *self, int64_t key) {
    Py_ssize_t lo = 0, hi = self->ngram_count;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (self->ngram_keys[mid] < key) lo = mid + 1;
        else hi = mid;
    }
    return lo < self->ngram_count && self->ngram_keys[lo] == key ? self->ngram_group[lo] : -1;
}

/* FeatureExtractor.cue_counts: per group the matches in the text, then per group those in its ask. */
static PyObject *cue_counts(const Scanner *self, Py_ssize_t n) {
    const int64_t *ids = self->ids;
    Py_ssize_t groups = self->groups;
    Py_ssize_t counts[256];
    memset(counts, 0, sizeof(counts));
    Py_ssize_t tail = n - self->ask_tail;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t id = ids[i];
        int group = self->unigram_group[id];
        int in_ask = i < self->ask_head || i >= tail;
        if (group >= 0) {
            counts[group]++;
            if (in_ask) counts[groups + group]++;
        }
        if (i + 1 < n && self->starts_ngram[id] && self->continues_ngram[ids[i + 1]]) {
            /* the 2- to max-token windows from here; past the end, a window reads token 0 */
            int64_t key = id;
            for (int length = 2; length <= self->max_cue_tokens; length++) {
                key = key * self->base + (i + length - 1 < n ? ids[i + length - 1] : 0);
                int64_t found = find_cue(self, key + self->cue_offsets[length - 1]);
                if (found >= 0) {
                    counts[found]++;
                    if (in_ask) counts[groups + found]++;
                }
            }
        }
    }
    PyObject *out = PyList_New(2 * groups);
    if (out == NULL) return NULL;
    for (Py_ssize_t g = 0; g < 2 * groups; g++) {
        PyObject *value = PyLong_FromSsize_t(counts[g]);
        if (value == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, g, value);
    }
    return out;
}

static inline int count_column(Scanner *self, int64_t column, Py_ssize_t *touched) {
    if (self->column_count[column]++ == 0) self->touched[(*touched)++] = column;
    return 0;
}

/* LexicalModel.raw_of_ids on self->ids[0:n] (extractor ids: those past the head's vocabulary are
 * unknown to it): Σ tf·idf·w / sqrt(Σ (tf·idf)²) + intercept, tf = 1 + log(count). */
static double gain_raw(Scanner *self, Py_ssize_t n) {
    const int64_t *ids = self->ids;
    int64_t vocab = self->vocab;
    int order = self->order;
    Py_ssize_t touched = 0;
    /* every position starts at most one n-gram of each length */
    if (reserve(&self->touched, &self->touched_capacity, n * order + 1) < 0) return NAN;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t first = ids[i] < vocab ? ids[i] : 0;
        int64_t column = self->unigram_column[first];
        if (column >= 0) count_column(self, column, &touched);
        int64_t key = first;
        for (int length = 2; length <= order && i + length - 1 < n; length++) {
            int64_t next = ids[i + length - 1];
            key = key * vocab + (next < vocab ? next : 0);
            column = gram_column(self, key + self->gain_offsets[length - 1]);
            if (column >= 0) count_column(self, column, &touched);
        }
    }
    if (touched == 0) return self->intercept;
    double dot = 0.0, norm = 0.0;
    for (Py_ssize_t j = 0; j < touched; j++) {
        int64_t column = self->touched[j];
        double tf = 1.0 + log((double)self->column_count[column]);
        self->column_count[column] = 0;
        dot += tf * self->idf_weight[column];
        norm += tf * tf * self->idf_squared[column];
    }
    return dot / sqrt(norm) + self->intercept;
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
    Py_ssize_t n = tokenize(self, view.buf, view.len);
    PyBuffer_Release(&view);
    if (n < 0) return NULL;
    PyObject *counts = cue_counts(self, n);
    if (counts == NULL) return NULL;
    double raw = NAN;
    if (with_gain) {
        raw = gain_raw(self, n);
        if (PyErr_Occurred()) {
            Py_DECREF(counts);
            return NULL;
        }
    }
    PyObject *gain = PyFloat_FromDouble(raw);
    if (gain == NULL) {
        Py_DECREF(counts);
        return NULL;
    }
    PyObject *out = PyTuple_Pack(2, counts, gain);
    Py_DECREF(counts);
    Py_DECREF(gain);
    return out;
}

static PyObject *Scanner_gain(Scanner *self, PyObject *arg) {
    Py_buffer view;
    if (read_bytes(arg, &view) < 0) return NULL;
    Py_ssize_t n = tokenize(self, view.buf, view.len);
    PyBuffer_Release(&view);
    if (n < 0) return NULL;
    double raw = gain_raw(self, n);
    if (PyErr_Occurred()) return NULL;
    return PyFloat_FromDouble(raw);
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
        PyObject *value = PyLong_FromLongLong(self->ids[i]);
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
     "scan(raw, with_gain) -> (cue counts, lexical head's raw output or nan)"},
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

/* DifficultyHead.level(DifficultyHead.raw(features)) for a list of floats. */
static PyObject *Difficulty_level(Difficulty *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "features must be a sequence of floats");
    if (seq == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != self->features) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "wrong number of features");
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    double ridge = 0.0;
    for (Py_ssize_t i = 0; i < self->features; i++) {
        double v = PyFloat_AsDouble(items[i]);
        if (v == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
        self->x[i] = v;
        ridge += v * self->weights[i];
    }
    Py_DECREF(seq);
    ridge += self->intercept;
    double leaves = 0.0;
    for (Py_ssize_t t = 0; t < self->trees; t++) {
        const int64_t *feature = self->feature + t * self->internal;
        const double *threshold = self->threshold + t * self->internal;
        Py_ssize_t node = 0;
        for (int level = 0; level < self->depth; level++) {
            /* the trees were fitted on float32 features: compared as scikit-learn does */
            double x = (double)(float)self->x[feature[node]];
            node = 2 * node + 1 + (x > threshold[node]);
        }
        leaves += self->value[t * self->nodes + node];
    }
    double trees = self->init + self->rate * leaves;
    double raw = self->blend * ridge + (1.0 - self->blend) * trees;
    return PyFloat_FromDouble(self->a * raw + self->b);
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
