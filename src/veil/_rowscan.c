/* veil._rowscan: the store's answer read in one pass, for the usual shape of answer.
 *
 * scan(body, rows_key, keys, max_digits) reads a UTF-8 JSON body (the caller has checked that it is
 * UTF-8) whose rows array is the whole document (rows_key None) or the value of a member
 * of the top-level object (rows_key), every row an object. In that one pass it validates
 * the whole document as strict JSON and records, for each row, where it starts and ends
 * (in code points, as Python indexes the decoded text) and the values of the members named
 * in ``keys`` (top-level names of the row), and whether a row names one of them twice.
 *
 * It answers None whenever the body is not that usual shape or holds anything it leaves to
 * the Python reader (veil.rows), which then reads the body as before: anything not strict
 * JSON, NaN or Infinity, an integer of max_digits digits or more (Python's limit on
 * converting integers, sys.get_int_max_str_digits(), which the caller passes), a lone surrogate
 * escape anywhere, a member name written with an
 * escape (in the envelope or at a row's top level), a read name repeated in a row, a row
 * that is not an object, nesting deeper than MAX_DEPTH, a rows array missing or not an
 * array. None is never a verdict: only the Python reader refuses a body, or finds a row
 * unreadable (R2). So this reader may hand back more than the Python one refuses, never
 * accept what it refuses, and where it answers, it answers as that reader would
 * (tests/test_rows_fast.py compares the two over a generated corpus).
 *
 * The result is a tuple:
 *   (array_start, array_end, spans, columns, deferred, members)
 * - array_start, array_end: where "[" is and just past "]";
 * - spans: a list of (start, end) per row, "{" to just past "}";
 * - columns: a tuple of one list per key: the member's value when it is a string without
 *   escapes, null (None), or an integer of at most 18 digits; else None with an entry in
 *   deferred; None when the row has no such member;
 * - deferred: (row, column, start) of values left to Python's decoder (strings with escapes,
 *   other numbers, true, false, objects, arrays), start being where the value begins;
 * - members: None when the document is the array; else a list of (name, start, end) of the
 *   top-level object's members in order, names as written (they hold no escape).
 *
 * Every read is bounds-checked against the body's length; nothing is written outside the
 * Python objects it creates.
 *
 * Three more functions do per-row work for the answers read: facts() (veil.rows.Normalizer's
 * facts of each row, from the columns), private_rows() (veil.policy.decide.match: the shipped
 * R1 and R2 on those facts) and join_rows() (veil.rows.render's join of the kept rows). Each
 * answers exactly as the Python loop it stands for (tests/test_rows_fast.py holds them to
 * it), and reads copies of the lists it is given, so the callbacks it makes cannot change
 * what it reads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_DEPTH 200
#define MAX_KEYS 16
#define SHORT_INT_DIGITS 18

enum { OK = 0, GIVE_UP = 1, FAILED = -1, MORE = 2 };

typedef struct {
    const unsigned char *s;
    Py_ssize_t n;
    Py_ssize_t p;    /* byte position */
    Py_ssize_t cont; /* UTF-8 continuation bytes before p: code point index = p - cont */
    Py_ssize_t max_digits; /* an integer of this many digits or more: Python's to judge */
} Scan;

static inline Py_ssize_t at(const Scan *sc) { return sc->p - sc->cont; }

static inline void skip_ws(Scan *sc) {
    const unsigned char *s = sc->s;
    Py_ssize_t p = sc->p, n = sc->n;
    while (p < n && (s[p] == ' ' || s[p] == '\n' || s[p] == '\r' || s[p] == '\t')) p++;
    sc->p = p;
}

/* Bytes that are string content as they stand: not '"', not '\\', not a control
 * character, not part of a multi-byte UTF-8 sequence (those are counted one by one). */
static unsigned char PLAIN[256];

static void init_plain(void) {
    for (int c = 0; c < 256; c++) PLAIN[c] = c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

static inline int hex4(const unsigned char *s, Py_ssize_t p, Py_ssize_t n, unsigned *out) {
    unsigned v = 0;
    if (p + 4 > n) return 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = s[p + i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

/* A string at s[p] == '"'; p ends just past the closing quote. *escaped: it holds an escape.
 * GIVE_UP on anything not strict JSON and on a lone surrogate escape. */
static int scan_string(Scan *sc, int *escaped) {
    const unsigned char *s = sc->s;
    Py_ssize_t p = sc->p + 1, n = sc->n, cont = sc->cont;
    int esc = 0;
    for (;;) {
        while (p < n && PLAIN[s[p]]) p++; /* the bulk of a string, one table look-up a byte */
        if (p >= n) return GIVE_UP;
        unsigned char c = s[p];
        if (c == '"') break;
        if (c == '\\') {
            esc = 1;
            if (p + 1 >= n) return GIVE_UP;
            unsigned char e = s[p + 1];
            if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                e == 'r' || e == 't') {
                p += 2;
                continue;
            }
            if (e != 'u') return GIVE_UP;
            unsigned u;
            if (!hex4(s, p + 2, n, &u)) return GIVE_UP;
            p += 6;
            if (u >= 0xDC00 && u <= 0xDFFF) return GIVE_UP; /* a lone low surrogate */
            if (u >= 0xD800 && u <= 0xDBFF) {                /* must pair with a low one */
                unsigned low;
                if (p + 1 >= n || s[p] != '\\' || s[p + 1] != 'u') return GIVE_UP;
                if (!hex4(s, p + 2, n, &low) || low < 0xDC00 || low > 0xDFFF) return GIVE_UP;
                p += 6;
            }
            continue;
        }
        if (c < 0x20) return GIVE_UP; /* a control character: not strict JSON */
        if ((c & 0xC0) == 0x80) cont++;
        p++;
    }
    sc->p = p + 1;
    sc->cont = cont;
    *escaped = esc;
    return OK;
}

/* A number at s[p]; strict JSON grammar. *digits: its digit count when it is an integer
 * (no fraction, no exponent), else -1. */
static int scan_number(Scan *sc, int *digits) {
    const unsigned char *s = sc->s;
    Py_ssize_t p = sc->p, n = sc->n, first;
    int integer = 1;
    if (p < n && s[p] == '-') p++;
    first = p;
    if (p >= n) return GIVE_UP;
    if (s[p] == '0') p++;
    else if (s[p] >= '1' && s[p] <= '9') {
        while (p < n && s[p] >= '0' && s[p] <= '9') p++;
    } else return GIVE_UP; /* -Infinity, or not a number */
    Py_ssize_t int_digits = p - first;
    if (p < n && s[p] == '.') {
        integer = 0;
        p++;
        if (p >= n || s[p] < '0' || s[p] > '9') return GIVE_UP;
        while (p < n && s[p] >= '0' && s[p] <= '9') p++;
    }
    if (p < n && (s[p] == 'e' || s[p] == 'E')) {
        integer = 0;
        p++;
        if (p < n && (s[p] == '+' || s[p] == '-')) p++;
        if (p >= n || s[p] < '0' || s[p] > '9') return GIVE_UP;
        while (p < n && s[p] >= '0' && s[p] <= '9') p++;
    }
    /* Python converts integers of fewer digits than its limit (sys.get_int_max_str_digits(),
     * passed in as max_digits); the Python reader finds a row holding a longer one
     * unreadable: its to judge */
    if (integer && int_digits >= sc->max_digits) return GIVE_UP;
    sc->p = p;
    *digits = integer ? (int_digits > SHORT_INT_DIGITS ? SHORT_INT_DIGITS + 1 : (int)int_digits)
                      : -1;
    return OK;
}

static int scan_literal(Scan *sc, const char *word, Py_ssize_t len) {
    if (sc->p + len > sc->n || memcmp(sc->s + sc->p, word, (size_t)len) != 0) return GIVE_UP;
    sc->p += len;
    return OK;
}

/* After an item or a member: MORE on ",", OK past the closing character, else GIVE_UP. */
static int next_or_close(Scan *sc, unsigned char close) {
    skip_ws(sc);
    if (sc->p >= sc->n) return GIVE_UP;
    if (sc->s[sc->p] == ',') {
        sc->p++;
        skip_ws(sc);
        return MORE;
    }
    if (sc->s[sc->p] == close) {
        sc->p++;
        return OK;
    }
    return GIVE_UP;
}

/* A member's name and its ":" at s[p]; p ends at its value. *name, *len: the name as
 * written (between the quotes); *escaped: it holds an escape. */
static int member_name(Scan *sc, Py_ssize_t *name, Py_ssize_t *len, int *escaped) {
    int r;
    if (sc->p >= sc->n || sc->s[sc->p] != '"') return GIVE_UP;
    *name = sc->p + 1;
    if ((r = scan_string(sc, escaped)) != OK) return r;
    *len = sc->p - 1 - *name;
    skip_ws(sc);
    if (sc->p >= sc->n || sc->s[sc->p] != ':') return GIVE_UP;
    sc->p++;
    skip_ws(sc);
    return OK;
}

static int scan_value(Scan *sc, int depth);

static int scan_container(Scan *sc, int depth) {
    unsigned char close = sc->s[sc->p] == '{' ? '}' : ']';
    int object = close == '}', escaped, r;
    Py_ssize_t name, len;
    if (depth > MAX_DEPTH) return GIVE_UP;
    sc->p++;
    skip_ws(sc);
    if (sc->p < sc->n && sc->s[sc->p] == close) {
        sc->p++;
        return OK;
    }
    do {
        if (object && (r = member_name(sc, &name, &len, &escaped)) != OK) return r;
        if ((r = scan_value(sc, depth + 1)) != OK) return r;
    } while ((r = next_or_close(sc, close)) == MORE);
    return r;
}

static int scan_value(Scan *sc, int depth) {
    int escaped, digits;
    if (sc->p >= sc->n) return GIVE_UP;
    switch (sc->s[sc->p]) {
    case '"': return scan_string(sc, &escaped);
    case '{':
    case '[': return scan_container(sc, depth);
    case 't': return scan_literal(sc, "true", 4);
    case 'f': return scan_literal(sc, "false", 5);
    case 'n': return scan_literal(sc, "null", 4);
    default: return scan_number(sc, &digits);
    }
}

typedef struct {
    PyObject *spans, *columns[MAX_KEYS], *deferred;
    const char *keys[MAX_KEYS];
    Py_ssize_t key_lens[MAX_KEYS];
    int nkeys;
} Out;

static int append_new(PyObject *list, PyObject *item) {
    if (item == NULL) return FAILED;
    int r = PyList_Append(list, item);
    Py_DECREF(item);
    return r < 0 ? FAILED : OK;
}

/* The value of a read member at s[p], as the columns hold it (see the top). */
static int read_member(Scan *sc, Out *out, Py_ssize_t row, const int *keys, int nkeys) {
    const unsigned char *s = sc->s;
    Py_ssize_t start = sc->p, start_at = at(sc);
    PyObject *value = NULL;
    int r, escaped, digits;
    if (start >= sc->n) return GIVE_UP;
    unsigned char c = s[start];
    if (c == '"') {
        if ((r = scan_string(sc, &escaped)) != OK) return r;
        if (!escaped) {
            value = PyUnicode_DecodeUTF8((const char *)s + start + 1, sc->p - start - 2, "strict");
            if (value == NULL) return FAILED;
        }
    } else if (c == 'n') {
        if ((r = scan_literal(sc, "null", 4)) != OK) return r;
        value = Py_NewRef(Py_None);
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        if ((r = scan_number(sc, &digits)) != OK) return r;
        if (digits >= 1 && digits <= SHORT_INT_DIGITS) {
            long long v = 0;
            Py_ssize_t q = start + (c == '-');
            for (; q < sc->p; q++) v = v * 10 + (s[q] - '0');
            value = PyLong_FromLongLong(c == '-' ? -v : v);
            if (value == NULL) return FAILED;
        }
    } else if ((r = scan_value(sc, 2)) != OK) {
        return r;
    }
    for (int i = 0; i < nkeys; i++) {
        if (value == NULL) { /* left to Python's decoder; the column keeps its None */
            PyObject *entry = Py_BuildValue("(nin)", row, keys[i], start_at);
            if (append_new(out->deferred, entry) != OK) return FAILED;
        } else {
            /* PyList_SetItem steals a reference and frees the None it replaces */
            PyList_SetItem(out->columns[keys[i]], row, Py_NewRef(value));
        }
    }
    Py_XDECREF(value);
    return OK;
}

static int scan_row(Scan *sc, Out *out, Py_ssize_t row) {
    const unsigned char *s = sc->s;
    Py_ssize_t start_at = at(sc);
    int seen[MAX_KEYS] = {0}, r, escaped;
    for (int k = 0; k < out->nkeys; k++) {
        if (PyList_Append(out->columns[k], Py_None) < 0) return FAILED;
    }
    sc->p++; /* "{" */
    skip_ws(sc);
    if (sc->p < sc->n && s[sc->p] == '}') {
        sc->p++;
    } else {
        do {
            Py_ssize_t name, name_len;
            if ((r = member_name(sc, &name, &name_len, &escaped)) != OK) return r;
            if (escaped) return GIVE_UP; /* names compared after unescaping: Python's work */
            int matches[MAX_KEYS], found = 0;
            for (int k = 0; k < out->nkeys; k++) {
                if (out->key_lens[k] == name_len &&
                    memcmp(s + name, out->keys[k], (size_t)name_len) == 0) {
                    if (seen[k]) return GIVE_UP; /* a read name repeated: Python's to judge */
                    seen[k] = 1;
                    matches[found++] = k;
                }
            }
            if (found && (r = read_member(sc, out, row, matches, found)) != OK) return r;
            if (!found && (r = scan_value(sc, 2)) != OK) return r;
        } while ((r = next_or_close(sc, '}')) == MORE);
        if (r != OK) return r;
    }
    PyObject *span = Py_BuildValue("(nn)", start_at, at(sc));
    return append_new(out->spans, span);
}

/* The rows array at s[p] == '['. */
static int scan_rows(Scan *sc, Out *out, Py_ssize_t *start, Py_ssize_t *end) {
    Py_ssize_t row = 0;
    int r;
    *start = at(sc);
    sc->p++;
    skip_ws(sc);
    if (sc->p < sc->n && sc->s[sc->p] == ']') {
        sc->p++;
        *end = at(sc);
        return OK;
    }
    do {
        if (sc->p >= sc->n || sc->s[sc->p] != '{') return GIVE_UP; /* not an object row */
        if ((r = scan_row(sc, out, row)) != OK) return r;
        row++;
    } while ((r = next_or_close(sc, ']')) == MORE);
    *end = at(sc);
    return r;
}

/* The top-level object: each member's (name, start, end); the rows array read where the
 * member is named rows_key (once; a second one is Python's to refuse). */
static int scan_envelope(Scan *sc, Out *out, const char *rows_key, Py_ssize_t rows_len,
                         PyObject *members, Py_ssize_t *start, Py_ssize_t *end) {
    const unsigned char *s = sc->s;
    int found = 0, r, escaped;
    if (sc->p >= sc->n || s[sc->p] != '{') return GIVE_UP;
    sc->p++;
    skip_ws(sc);
    if (sc->p < sc->n && s[sc->p] == '}') return GIVE_UP; /* no rows array */
    do {
        Py_ssize_t name, name_len;
        if ((r = member_name(sc, &name, &name_len, &escaped)) != OK) return r;
        if (escaped) return GIVE_UP;
        Py_ssize_t value_at = at(sc);
        if (name_len == rows_len && memcmp(s + name, rows_key, (size_t)rows_len) == 0) {
            if (found || sc->p >= sc->n || s[sc->p] != '[') return GIVE_UP;
            found = 1;
            if ((r = scan_rows(sc, out, start, end)) != OK) return r;
        } else if ((r = scan_value(sc, 1)) != OK) {
            return r;
        }
        PyObject *member = Py_BuildValue(
            "(Nnn)", PyUnicode_DecodeUTF8((const char *)s + name, name_len, "strict"),
            value_at, at(sc));
        if (append_new(members, member) != OK) return FAILED;
    } while ((r = next_or_close(sc, '}')) == MORE);
    return r == OK && !found ? GIVE_UP : r;
}

static PyObject *scan(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer body;
    PyObject *rows_key_obj, *keys, *result = NULL, *members = NULL, *columns = NULL;
    Out out = {0};
    Scan sc = {NULL, 0, 0, 0, 0};
    Py_ssize_t start = 0, end = 0;
    int r = FAILED;
    Py_ssize_t max_digits;
    if (!PyArg_ParseTuple(args, "y*OO!n", &body, &rows_key_obj, &PyTuple_Type, &keys,
                          &max_digits)) {
        return NULL;
    }
    Py_ssize_t nkeys = PyTuple_GET_SIZE(keys);
    if (nkeys > MAX_KEYS) {
        PyBuffer_Release(&body);
        Py_RETURN_NONE;
    }
    out.nkeys = (int)nkeys;
    for (int k = 0; k < out.nkeys; k++) {
        PyObject *key = PyTuple_GET_ITEM(keys, k);
        if (!PyUnicode_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "keys must be str");
            goto done;
        }
        out.keys[k] = PyUnicode_AsUTF8AndSize(key, &out.key_lens[k]);
        if (out.keys[k] == NULL) goto done;
    }
    out.spans = PyList_New(0);
    out.deferred = PyList_New(0);
    if (!out.spans || !out.deferred) goto done;
    for (int k = 0; k < out.nkeys; k++) {
        if ((out.columns[k] = PyList_New(0)) == NULL) goto done;
    }
    sc.s = (const unsigned char *)body.buf;
    sc.n = body.len;
    sc.max_digits = max_digits;
    skip_ws(&sc);
    if (rows_key_obj == Py_None) {
        if (sc.p >= sc.n || sc.s[sc.p] != '[') {
            r = GIVE_UP;
        } else {
            r = scan_rows(&sc, &out, &start, &end);
        }
    } else {
        Py_ssize_t rows_len;
        const char *rows_key;
        if (!PyUnicode_Check(rows_key_obj)) {
            PyErr_SetString(PyExc_TypeError, "rows_key must be str or None");
            goto done;
        }
        rows_key = PyUnicode_AsUTF8AndSize(rows_key_obj, &rows_len);
        if (rows_key == NULL || (members = PyList_New(0)) == NULL) goto done;
        r = scan_envelope(&sc, &out, rows_key, rows_len, members, &start, &end);
    }
    if (r == OK) {
        skip_ws(&sc);
        if (sc.p != sc.n) r = GIVE_UP; /* trailing data */
    }
    if (r == GIVE_UP) {
        result = Py_NewRef(Py_None);
    } else if (r == OK) {
        if ((columns = PyTuple_New(nkeys)) == NULL) goto done;
        for (int k = 0; k < out.nkeys; k++) {
            PyTuple_SET_ITEM(columns, k, out.columns[k]);
            out.columns[k] = NULL;
        }
        result = Py_BuildValue("(nnOOOO)", start, end, out.spans, columns, out.deferred,
                               members ? members : Py_None);
    }
done:
    PyBuffer_Release(&body);
    Py_XDECREF(out.spans);
    Py_XDECREF(out.deferred);
    for (int k = 0; k < MAX_KEYS; k++) Py_XDECREF(out.columns[k]);
    Py_XDECREF(columns);
    Py_XDECREF(members);
    return result;
}

/* ---- facts(): what Veil reads of each row, from the columns ---------------------------- */

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant's
 * days_from_civil). */
static long long days_from_civil(long long y, unsigned m, unsigned d) {
    y -= m <= 2;
    const long long era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

static int digits(const char *s, int from, int to, int *value) {
    int v = 0;
    for (int i = from; i < to; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (s[i] - '0');
    }
    *value = v;
    return 1;
}

/* RFC 3339 in UTC to the millisecond, "2026-11-25T18:58:06.480Z" (the usual spelling), with
 * a year in 1678-2261 (so within a signed 64-bit count of nanoseconds): its nanoseconds since
 * the epoch in *ns. 0 for anything else, which veil.rows.timestamp_ns then reads. */
static int usual_time(PyObject *text, long long *ns) {
    static const unsigned char month_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (!PyUnicode_IS_ASCII(text) || PyUnicode_GET_LENGTH(text) != 24) return 0;
    const char *s = (const char *)PyUnicode_DATA(text);
    int year, month, day, hour, minute, second, milli;
    if (s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' ||
        s[19] != '.' || s[23] != 'Z')
        return 0;
    if (!digits(s, 0, 4, &year) || !digits(s, 5, 7, &month) || !digits(s, 8, 10, &day) ||
        !digits(s, 11, 13, &hour) || !digits(s, 14, 16, &minute) ||
        !digits(s, 17, 19, &second) || !digits(s, 20, 23, &milli))
        return 0;
    if (year < 1678 || year > 2261 || month < 1 || month > 12 || day < 1 || hour > 23 ||
        minute > 59 || second > 59)
        return 0;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day > month_days[month - 1] + (month == 2 && leap)) return 0;
    long long seconds = days_from_civil(year, (unsigned)month, (unsigned)day) * 86400LL +
                        hour * 3600LL + minute * 60LL + second;
    *ns = seconds * 1000000000LL + milli * 1000000LL;
    return 1;
}

/* cache[value], else cache.setdefault(value, make(value)); a new reference, NULL on error. */
static PyObject *remembered(PyObject *cache, PyObject *value, PyObject *make) {
    PyObject *found = PyDict_GetItemWithError(cache, value);
    if (found != NULL) return Py_NewRef(found);
    if (PyErr_Occurred()) return NULL;
    PyObject *made = PyObject_CallOneArg(make, value);
    if (made == NULL) return NULL;
    found = PyDict_SetDefault(cache, value, made);
    Py_DECREF(made);
    return Py_XNewRef(found);
}

/* Tuples holding what the lists hold now, all of one length (in *n): read from these,
 * items stay alive and in place whatever the callbacks do to the lists. 0 on error. */
static int snapshot(PyObject **columns, int count, Py_ssize_t *n, PyObject **copies) {
    for (int k = 0; k < count; k++) {
        if ((copies[k] = PyList_AsTuple(columns[k])) == NULL) return 0;
        if (k == 0) *n = PyTuple_GET_SIZE(copies[0]);
        if (PyTuple_GET_SIZE(copies[k]) != *n) {
            PyErr_SetString(PyExc_ValueError, "the columns differ in length");
            return 0;
        }
    }
    return 1;
}

/* item as ``cache`` keys it when it is a str (see remembered), else ``otherwise``; a new
 * reference, NULL on error. */
static PyObject *keyed(PyObject *item, PyObject *cache, PyObject *make, PyObject *otherwise) {
    return PyUnicode_CheckExact(item) ? remembered(cache, item, make) : Py_NewRef(otherwise);
}

static PyObject *facts(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *lists[4], *actor_keys, *kind_names, *key_of, *kind_of, *to_ns, *user;
    PyObject *columns[4] = {NULL, NULL, NULL, NULL};
    PyObject *out_ids = NULL, *out_who = NULL, *out_kinds = NULL, *out_stamps = NULL,
             *late = NULL, *result = NULL;
    Py_ssize_t n = 0;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!OOOU", &PyList_Type, &lists[0], &PyList_Type,
                          &lists[1], &PyList_Type, &lists[2], &PyList_Type, &lists[3],
                          &PyDict_Type, &actor_keys, &PyDict_Type, &kind_names, &key_of,
                          &kind_of, &to_ns, &user)) {
        return NULL;
    }
    if (!snapshot(lists, 4, &n, columns)) goto done;
    PyObject *ids = columns[0], *actors = columns[1], *kinds = columns[2], *stamps = columns[3];
    if (!(out_ids = PyList_New(n)) || !(out_who = PyList_New(n)) ||
        !(out_kinds = PyList_New(n)) || !(out_stamps = PyList_New(n)) ||
        !(late = PyList_New(0)))
        goto done;
    /* each list item is set exactly once below (PyList_SET_ITEM steals the reference) */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *id = PyTuple_GET_ITEM(ids, i), *value;
        if (PyUnicode_CheckExact(id)) {
            value = Py_NewRef(id);
        } else if (PyLong_CheckExact(id)) {
            int overflow;
            (void)PyLong_AsLongLongAndOverflow(id, &overflow); /* MIN_INT..MAX_INT, 64 bits */
            if (overflow) {
                PyObject *index = PyLong_FromSsize_t(i);
                if (index == NULL || PyList_Append(late, index) < 0) {
                    Py_XDECREF(index);
                    goto done;
                }
                Py_DECREF(index);
            }
            value = Py_NewRef(id);
        } else {
            value = Py_NewRef(Py_None);
        }
        PyList_SET_ITEM(out_ids, i, value);

        value = keyed(PyTuple_GET_ITEM(actors, i), actor_keys, key_of, Py_None);
        if (value == NULL) goto done;
        PyList_SET_ITEM(out_who, i, value);
        if ((value = keyed(PyTuple_GET_ITEM(kinds, i), kind_names, kind_of, user)) == NULL)
            goto done;
        PyList_SET_ITEM(out_kinds, i, value);

        PyObject *stamp = PyTuple_GET_ITEM(stamps, i);
        long long ns;
        if (stamp == Py_None) {
            value = Py_NewRef(Py_None);
        } else if (PyUnicode_CheckExact(stamp) && usual_time(stamp, &ns)) {
            value = PyLong_FromLongLong(ns);
        } else {
            value = PyObject_CallOneArg(to_ns, stamp);
        }
        if (value == NULL) goto done;
        PyList_SET_ITEM(out_stamps, i, value);
    }
    result = PyTuple_Pack(5, out_ids, out_who, out_kinds, out_stamps, late);
done:
    /* a list left part-filled on error holds NULLs, which list deallocation skips */
    for (int k = 0; k < 4; k++) Py_XDECREF(columns[k]);
    Py_XDECREF(out_ids);
    Py_XDECREF(out_who);
    Py_XDECREF(out_kinds);
    Py_XDECREF(out_stamps);
    Py_XDECREF(late);
    return result;
}

/* ---- private_rows(): R2 and R1 applied to the facts ------------------------------------- */

/* Whether bound <= ts (below: ts < bound): exact, as Python compares an int with an int or a
 * float; int64 arithmetic when both are ints that fit in 64 bits. -1 on error. */
static int in_order(PyObject *low, PyObject *high, int strict) {
    if (PyLong_CheckExact(low) && PyLong_CheckExact(high)) {
        int o1, o2;
        long long a = PyLong_AsLongLongAndOverflow(low, &o1);
        long long b = PyLong_AsLongLongAndOverflow(high, &o2);
        if (!o1 && !o2) return strict ? a < b : a <= b;
        if (PyErr_Occurred()) return -1;
    }
    return PyObject_RichCompareBool(low, high, strict ? Py_LT : Py_LE);
}

/* Whether the time ``stamp`` falls in one of ``windows``, each (start, end) with
 * start <= time < end; -1 on error. The time is asked of ``to_ns`` only when there are
 * windows, as the Python loop asks it. */
static int in_windows(PyObject *windows, PyObject *stamp, PyObject *to_ns) {
    int any = PyObject_IsTrue(windows), inside = 0;
    if (any <= 0) return any;
    PyObject *ts = PyLong_CheckExact(stamp) ? Py_NewRef(stamp) : PyObject_CallOneArg(to_ns, stamp);
    PyObject *iter = ts ? PyObject_GetIter(windows) : NULL, *window;
    if (iter == NULL) {
        Py_XDECREF(ts);
        return -1;
    }
    while (inside == 0 && (window = PyIter_Next(iter)) != NULL) {
        if (PyTuple_CheckExact(window) && PyTuple_GET_SIZE(window) == 2) {
            inside = in_order(PyTuple_GET_ITEM(window, 0), ts, 0);
            if (inside == 1) inside = in_order(ts, PyTuple_GET_ITEM(window, 1), 1);
        } else {
            PyErr_SetString(PyExc_TypeError, "a window is not a (start, end) tuple");
            inside = -1;
        }
        Py_DECREF(window);
    }
    if (inside == 0 && PyErr_Occurred()) inside = -1; /* the iteration itself failed */
    Py_DECREF(iter);
    Py_DECREF(ts);
    return inside;
}

static PyObject *private_rows(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *lists[3], *table, *to_ns;
    PyObject *facts[3] = {NULL, NULL, NULL};
    int no_actor, no_time, in_window;
    PyObject *private = NULL, *pending = NULL, *result = NULL;
    Py_ssize_t n = 0;
    if (!PyArg_ParseTuple(args, "O!O!O!O!pppO", &PyList_Type, &lists[0], &PyList_Type,
                          &lists[1], &PyList_Type, &lists[2], &PyDict_Type, &table, &no_actor,
                          &no_time, &in_window, &to_ns)) {
        return NULL;
    }
    if (!snapshot(lists, 3, &n, facts)) goto done;
    if (!(private = PyList_New(0)) || !(pending = PyList_New(0))) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *actor = PyTuple_GET_ITEM(facts[0], i), *stamp = PyTuple_GET_ITEM(facts[2], i);
        PyObject *into = NULL; /* private, pending, or neither */
        if (actor == Py_None || stamp == Py_None) {
            if ((no_actor && actor == Py_None) || (no_time && stamp == Py_None)) into = private;
        } else if (in_window && PyUnicode_CheckExact(actor)) {
            PyObject *pair = PyTuple_Pack(2, PyTuple_GET_ITEM(facts[1], i), actor);
            if (pair == NULL) goto done;
            PyObject *windows = PyDict_GetItemWithError(table, pair);
            Py_DECREF(pair);
            if (windows == NULL) {
                if (PyErr_Occurred()) goto done;
                into = pending;
            } else {
                Py_INCREF(windows); /* the table may change while it is read */
                int inside = in_windows(windows, stamp, to_ns);
                Py_DECREF(windows);
                if (inside < 0) goto done;
                if (inside) into = private;
            }
        }
        if (into != NULL) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(into, index) < 0) {
                Py_XDECREF(index);
                goto done;
            }
            Py_DECREF(index);
        }
    }
    result = PyTuple_Pack(2, private, pending);
done:
    for (int k = 0; k < 3; k++) Py_XDECREF(facts[k]);
    Py_XDECREF(private);
    Py_XDECREF(pending);
    return result;
}

/* ---- join_rows(): the rows array Veil sends ----------------------------------------------- */

/* One span (start, end) of the text, checked; 0 on error. */
static int span_of(PyObject *spans, Py_ssize_t i, Py_ssize_t length, Py_ssize_t *start,
                   Py_ssize_t *end) {
    PyObject *span = PyList_GET_ITEM(spans, i);
    if (!PyTuple_CheckExact(span) || PyTuple_GET_SIZE(span) != 2) {
        PyErr_SetString(PyExc_TypeError, "a span is not a (start, end) tuple");
        return 0;
    }
    *start = PyLong_AsSsize_t(PyTuple_GET_ITEM(span, 0));
    *end = PyLong_AsSsize_t(PyTuple_GET_ITEM(span, 1));
    if (PyErr_Occurred()) return 0;
    if (*start < 0 || *start > *end || *end > length) {
        PyErr_SetString(PyExc_ValueError, "a span is outside the text");
        return 0;
    }
    return 1;
}

static PyObject *join_rows(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *text, *spans, *drop;
    if (!PyArg_ParseTuple(args, "UO!O!", &text, &PyList_Type, &spans, &PyList_Type, &drop)) {
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(text)) Py_RETURN_NONE; /* veil.rows.render joins it in Python */
    const char *source = (const char *)PyUnicode_DATA(text);
    Py_ssize_t length = PyUnicode_GET_LENGTH(text), n = PyList_GET_SIZE(spans);
    Py_ssize_t ndrop = PyList_GET_SIZE(drop), total = 2, kept = 0, start, end;
    /* which rows are dropped: drop is ascending; each index read once, in both passes */
    char *dropped = PyMem_Calloc(n ? (size_t)n : 1, 1);
    PyObject *result = NULL;
    if (dropped == NULL) return PyErr_NoMemory();
    for (Py_ssize_t d = 0; d < ndrop; d++) {
        Py_ssize_t index = PyLong_AsSsize_t(PyList_GET_ITEM(drop, d));
        if (index == -1 && PyErr_Occurred()) goto done;
        if (index >= 0 && index < n) dropped[index] = 1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (dropped[i]) continue;
        if (!span_of(spans, i, length, &start, &end)) goto done;
        total += (end - start) + (kept++ ? 1 : 0);
    }
    result = PyUnicode_New(total, 127);
    if (result == NULL) goto done;
    char *out = (char *)PyUnicode_DATA(result);
    Py_ssize_t at = 0;
    out[at++] = '[';
    kept = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (dropped[i]) continue;
        if (!span_of(spans, i, length, &start, &end)) { /* the list changed between passes */
            Py_CLEAR(result);
            goto done;
        }
        if (kept++) out[at++] = ',';
        if (at + (end - start) > total - 1) {
            PyErr_SetString(PyExc_RuntimeError, "the spans changed while they were joined");
            Py_CLEAR(result);
            goto done;
        }
        memcpy(out + at, source + start, (size_t)(end - start));
        at += end - start;
    }
    out[at++] = ']';
    if (at != total) {
        PyErr_SetString(PyExc_RuntimeError, "the spans changed while they were joined");
        Py_CLEAR(result);
    }
done:
    PyMem_Free(dropped);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(body, rows_key, keys, max_digits): the rows of a usual store answer in one pass, or None."},
    {"facts", facts, METH_VARARGS,
     "facts(ids, actors, kinds, stamps, actor_keys, kind_names, key_of, kind_of, to_ns, user): "
     "veil.rows.Normalizer's facts of each row, from its columns."},
    {"private_rows", private_rows, METH_VARARGS,
     "private_rows(actors, kinds, stamps, table, no_actor, no_time, in_window, to_ns): "
     "veil.policy.decide.RowDecider's private rows and the rows whose windows are not cached."},
    {"join_rows", join_rows, METH_VARARGS,
     "join_rows(text, spans, drop): '[' + ','.join(the text of each span not in drop) + ']' "
     "for an ASCII text, else None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "veil._rowscan",
    .m_doc = "The store's answer read in one pass, for the usual shape of answer (see veil.rows).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__rowscan(void) {
    init_plain();
    return PyModule_Create(&module);
}
