/*
 * json_reader.h - a pull reader of JSON text held in memory, for files too
 * large for a tree (COCO detection results: hundreds of MB). The caller
 * walks objects and arrays and takes the values it wants; everything else
 * is skipped, checked but not stored. Nothing is allocated.
 *
 * Strict RFC 8259 (what Python's json.loads accepts, less NaN and
 * Infinity): no trailing commas, no comments, no control characters in
 * strings, no leading zeros or "+" in numbers, nothing but whitespace after
 * the root value. A UTF-8 byte order mark before the root is skipped.
 * Numbers become the double nearest to their decimal value, as strtod and
 * Python's float() give it. Nesting deeper than JR_MAX_DEPTH is refused.
 *
 * Every function returns 0 or 1 as documented, or -1 after recording an
 * error: the first error stays, with its byte offset, line and column, and
 * every later call returns -1 at once. jr_error sets it as qkv's error.
 */
#ifndef QKV_IO_JSON_READER_H
#define QKV_IO_JSON_READER_H

#include <stddef.h>

#define JR_MAX_DEPTH 512

typedef enum {
    JR_NONE = 0, /* end of input or an error */
    JR_OBJECT,
    JR_ARRAY,
    JR_STRING,
    JR_NUMBER,
    JR_TRUE,
    JR_FALSE,
    JR_NULL,
} jr_kind;

typedef struct {
    const char *text, *p, *end; /* text[end - text] must be readable (a NUL) */
    const char *name;           /* the file, for messages */
    int depth;
    int failed;
    size_t err_at;              /* byte offset of the error */
    char err[160];
} jr;

/* Starts at the root value (after whitespace and a byte order mark). */
void jr_init(jr *j, const char *text, size_t len, const char *name);
/* The kind of the value at the cursor (after whitespace), JR_NONE if none. */
jr_kind jr_peek(jr *j);
/* "an object", "a list", ...: for messages. */
const char *jr_kind_name(jr_kind k);

/* Enters the object at the cursor: 0, or -1 if it is not one. */
int jr_object(jr *j);
/* The next member of the object being walked: 1 with the cursor on its value
 * and the key in key as jr_string gives it (*len its full length), 0 after
 * the closing brace. *first is 1 before the first call on an object. */
int jr_key(jr *j, char *key, size_t cap, size_t *len, int *first);
/* Enters the array at the cursor: 0, or -1. */
int jr_array(jr *j);
/* 1 with the cursor on the next element, 0 after the closing bracket;
 * *first as for jr_key. */
int jr_next(jr *j, int *first);

/* The number at the cursor: 0, or -1 (not a number, or malformed). */
int jr_number(jr *j, double *out);
/* The string at the cursor, unescaped to UTF-8: *len (NULL: not wanted)
 * receives its length in bytes, and buf (NULL: not wanted) its first
 * min(*len, cap - 1) bytes and a NUL. 0, or -1. */
int jr_string(jr *j, char *buf, size_t cap, size_t *len);
/* Skips the value at the cursor, checking it: 0, or -1. */
int jr_skip(jr *j);
/* After the root value: 0 if only whitespace follows, else -1. */
int jr_end(jr *j);

/* Records an error at the cursor (printf format); returns -1. */
int jr_fail(jr *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sets qkv's error from j's: "NAME: not valid JSON at byte B (line L,
 * column C): WHAT". Returns QKV_ERR_FORMAT as an int. */
int jr_error(const jr *j);

/* The JSON number s[0..n) as the nearest double (exact fast paths, strtod
 * in the C locale otherwise); NaN if s[0..n) is not one number. */
double jr_decimal(const char *s, size_t n);

#endif
