/* run.c: run an lmforge model from its parameter file. One C99 file, libc and libm only (OpenMP optional).

   cc -O3 -o run runner/run.c -lm                       (portable; or `make runner`: -march=native -fopenmp)
   ./run model.bin -i "Once upon a time" -n 200 [-t 0.8] [-p 0.9] [-s 42]
   ./run model.bin -m chat -y "You are helpful." -i "What is 2+3?"   (no -i: one user turn per stdin line)
   Chat runs the calculator calls the model makes (as `lmforge chat` does; see "the calculator tool" below) and
   warns when the file's model was never fine-tuned for chat; generate prints the prompt, then its continuation.

   The parameter file (written by `lmforge export params`, documented field by field in lmforge/inference/paramfile.py),
   all integers little-endian:
     fixed header, 128 bytes: u8[4] magic "LMFG" | u32 version (1) | u64 file_size (must equal the file's size) |
       u32 dim, hidden_dim, n_layer, n_head, n_kv_head, head_dim, vocab_size, seq_len | f32 rope_theta, norm_eps |
       u32 flags (1: output head tied to the embedding, 2: QK-norm, 4: fine-tuned for chat) | u32 dtype (0 fp32, 1 fp16, 2 bf16, 3 int8) |
       u32 group_size (int8) | u32 n_tensors | u64 tokenizer_offset, tensors_offset, data_offset | 32 zero bytes
     tokenizer: u32 n_tokens, n_special | u32 len + split regex | n_tokens x (u32 len + bytes of token id i) |
       n_special x (u32 id, u32 len + name)
     tensor table: n_tensors x (u32 len + name, u32 dtype, u32 rows, u32 cols, u64 offset, u64 nbytes)
     data: each tensor at a 64-byte aligned offset; fp32/fp16/bf16 row-major; int8: rows*cols int8 values, then
       one f32 scale per group_size values (value = q * scale). Norm weights are fp32.

   Model (lmforge/model.py, Llama family): per layer x += Wo attn(RoPE(qnorm(Wq h)), RoPE(knorm(Wk h)), Wv h) and
   x += Wdown(silu(Wgate h) * Wup h), each with h = RMSNorm(x) (q/k norms only with QK-norm; K/V heads shared by
   n_head/n_kv_head queries; RoPE pairs dims i and i + head_dim/2, "rotate_half"). The prompt is prefilled as one
   batch (each weight row read once for all its tokens), then each new token is one step against the KV cache.

   Tokenizer: byte-level BPE with tiktoken's rule (a token id is its rank; a chunk that is a token is emitted whole,
   otherwise the adjacent pair whose concatenation ranks lowest merges first, leftmost on ties) over GPT-4's split
   regex. ASCII is classified exactly, other code points by a small range table (plus the shared layout of the Indic
   blocks): an approximation of Unicode's categories that misclassifies 4% of the assigned non-private code points
   (rare symbols, combining marks, some scripts' digits), yet gave ids identical to the Python tokenizer on 987 of
   987 non-ASCII web pages (3.5M tokens, vocabulary 8192 trained on them; benchmarks/bench_runner.py measures it). */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if defined(__AVX__) || defined(__AVX2__)
#include <immintrin.h> /* the compiler's own header: intrinsics for the dot products gcc does not vectorize well */
#endif
#ifdef _OPENMP /* threads only for loops big enough to repay waking them (a matmul of 256K multiply-adds or more) */
#define PRAGMA(x) _Pragma(#x)
#define PFOR(work) PRAGMA(omp parallel for schedule(static) if ((work) >= 262144))
#else
#define PFOR(work)
#endif

enum { F32 = 0, F16 = 1, BF16 = 2, Q8 = 3 };
static const char *progfile = "";

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, *progfile ? "run: %s: " : "run: ", progfile);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2); /* as the lmforge CLI: 2 for a bad input, never a crash */
}
static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) die("out of memory");
    return p;
}
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------- numbers: half floats and dot products */
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
/* Not NaN or infinite, tested on the bits: under -ffast-math (`make runner`) the compiler may assume that isfinite()
   is always true and that comparisons with NaN never happen, so a NaN read from the file or a flag would pass. */
static inline int finite_f32(float f) { return (f32_bits(f) & 0x7f800000u) != 0x7f800000u; }
static inline float bf16_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }
/* IEEE half -> single with masks instead of branches, so the compiler vectorizes it: re-bias the exponent; a
   subnormal (exponent 0) is built as 2^-14 * (1 + m/1024) and 2^-14 is subtracted (no denormal arithmetic);
   Inf/NaN get an all-ones exponent. */
static inline float f16_f32(uint16_t h) {
    uint32_t e = h & 0x7c00u, em = (uint32_t)(h & 0x7fffu) << 13, s = (uint32_t)(h & 0x8000u) << 16;
    uint32_t zero = 0u - (uint32_t)(e == 0), inf = 0u - (uint32_t)(e == 0x7c00u);
    float f = bits_f32(em + (112u << 23) + (inf & (112u << 23)) + (zero & (1u << 23))) - bits_f32(zero & (113u << 23));
    return bits_f32(f32_bits(f) | s);
}
#define ID(v) (v)
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
/* Two 8-lane FMA chains over weights widened to fp32 in registers (F16C for fp16, a shift for bf16): gcc does not
   contract to FMA under -std=c99, and the portable loop streams the weights markedly slower (bench_runner.py). */
#define W_F32(p) _mm256_loadu_ps(p)
#define W_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define W_BF16(p) \
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define DOT(LOAD8, LOAD)                                                                     \
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();                                \
    int i = 0;                                                                              \
    for (; i + 16 <= n; i += 16) {                                                          \
        a = _mm256_fmadd_ps(LOAD8(w + i), _mm256_loadu_ps(x + i), a);                       \
        b = _mm256_fmadd_ps(LOAD8(w + i + 8), _mm256_loadu_ps(x + i + 8), b);               \
    }                                                                                       \
    a = _mm256_add_ps(a, b);                                                                \
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));          \
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));                                                 \
    float s = _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)));                             \
    for (; i < n; i++) s += LOAD(w[i]) * x[i];                                              \
    return s;
#else /* sixteen independent partial sums: gcc -O3 vectorizes them without -ffast-math (no reassociation needed) */
#define DOT(LOAD8, LOAD)                                                        \
    float acc[16] = {0}, s = 0.0f;                                              \
    int i = 0;                                                                  \
    for (; i + 16 <= n; i += 16)                                                \
        for (int j = 0; j < 16; j++) acc[j] += LOAD(w[i + j]) * x[i + j];       \
    for (; i < n; i++) s += LOAD(w[i]) * x[i];                                  \
    for (int j = 0; j < 16; j++) s += acc[j];                                   \
    return s;
#endif
/* inline: without it gcc -O3 -march=native calls it once per weight row (~50K calls a token) */
static inline float dot_f32(const float *w, const float *x, int n) { DOT(W_F32, ID) }
static float dot_f16(const uint16_t *w, const float *x, int n) { DOT(W_F16, f16_f32) }
static float dot_bf16(const uint16_t *w, const float *x, int n) { DOT(W_BF16, bf16_f32) }
/* int8 weights x int8 activations, one int32 sum per group, scaled once per group (as llama2.c's runq.c). */
static float dot_q8(const int8_t *w, const float *ws, const int8_t *x, const float *xs, int n, int gs) {
    float s = 0.0f;
#ifdef __AVX2__ /* 32 products per step: |w| * (x with w's sign) as u8 x s8 pairs, then pairs of i16 to i32 */
    if (gs % 32 == 0) {
        __m256 acc = _mm256_setzero_ps();
        const __m256i ones = _mm256_set1_epi16(1);
        for (int g = 0; g < n; g += gs) {
            __m256i sum = _mm256_setzero_si256();
            for (int j = g; j < g + gs; j += 32) {
                __m256i a = _mm256_loadu_si256((const __m256i *)(w + j));
                __m256i b = _mm256_loadu_si256((const __m256i *)(x + j));
                __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, ones));
            }
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(ws[g / gs] * xs[g / gs])));
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, acc);
        for (int j = 0; j < 8; j++) s += lanes[j];
        return s;
    }
#endif
    for (int g = 0; g < n; g += gs) {
        int32_t acc = 0;
        for (int j = 0; j < gs; j++) acc += (int32_t)w[g + j] * (int32_t)x[g + j];
        s += (float)acc * ws[g / gs] * xs[g / gs];
    }
    return s;
}
static void quantize_row(int8_t *q, float *scale, const float *x, int n, int gs) {
    for (int g = 0; g < n; g += gs) {
        float amax = 0.0f;
        for (int j = 0; j < gs; j++) amax = fmaxf(amax, fabsf(x[g + j]));
        float sc = amax / 127.0f, inv = sc > 0 ? 1.0f / sc : 0.0f;
        scale[g / gs] = sc;
        for (int j = 0; j < gs; j++) q[g + j] = (int8_t)lrintf(x[g + j] * inv);
    }
}

/* ---------------------------------------------------------------- the parameter file */
typedef struct { int dtype, rows, cols, gs; const void *data; const float *scale; } Tensor; /* gs: int8 group */
typedef struct { Tensor attn_norm, wq, wk, wv, wo, q_norm, k_norm, mlp_norm, gate, up, down; } Layer;
typedef struct {
    int dim, hidden, n_layer, n_head, n_kv, hd, vocab, seq_len, flags, dtype, gs, n_tensors;
    float theta, eps;
    Tensor emb, norm, head;
    Layer *layers;
} Model;
typedef struct { const uint8_t *p, *end; const char *what; } Cursor; /* reads one section [p, end) of the file */
typedef struct { const uint8_t *s; uint32_t len; } Str;
typedef struct {
    int n_tokens, n_special, bos, end, system, user, assistant, call, call_end, output, output_end;
    Str *tok, *sp; /* the bytes of token id i; the names of the special tokens, whose ids are in sp_id */
    int *sp_id, *ht, ht_size; /* ht: open addressing, token bytes -> id + 1 */
} Tokenizer;

/* Every count, offset and length read from the file passes one of these checks before anything is sized or indexed
   by it. lmforge/inference/paramfile.py (`lmforge inspect`) makes the same checks in the same order with the same words,
   and a test feeds both the same corruptions: a file one of them accepts, the other accepts too. */
#define check(ok, ...) ((ok) ? (void)0 : die(__VA_ARGS__))
/* The header's integer fields in file order and the range of each (params.py's HEADER_BOUNDS, compared by a test). */
static const struct { const char *name; uint32_t lo, hi; } FIELDS[12] = {
    {"dim", 2, 65536}, {"hidden_dim", 1, 262144}, {"n_layer", 1, 1024}, {"n_head", 1, 1024}, {"n_kv_head", 1, 1024},
    {"head_dim", 2, 1024}, {"vocab_size", 256, 16777216}, {"seq_len", 1, 65536}, {"flags", 0, 7}, {"dtype", 0, 3},
    {"group_size", 0, 65536}, {"n_tensors", 3, 65536}};
enum { MAX_SPECIAL = 1024 };

static const uint8_t *take(Cursor *c, uint64_t n) {
    check(n <= (uint64_t)(c->end - c->p), "the %s is truncated or corrupt (a length runs past its end)", c->what);
    return (c->p += n) - n;
}
static uint32_t rd32(Cursor *c) { uint32_t v; memcpy(&v, take(c, 4), 4); return v; }
static uint64_t rd64(Cursor *c) { uint64_t v; memcpy(&v, take(c, 8), 8); return v; }
static Str rdstr(Cursor *c) { Str r; r.len = rd32(c); r.s = take(c, r.len); return r; }
static int str_is(Str a, const char *b) { return a.len == strlen(b) && memcmp(a.s, b, a.len) == 0; }
static int str_eq(Str a, Str b) { return a.len == b.len && memcmp(a.s, b.s, a.len) == 0; }
/* A name safe to compare and to print in a one-line message: 1 to 64 bytes of printable ASCII, no space. */
static int printable(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n; i++) if (s[i] < 0x21 || s[i] > 0x7e) return 0;
    return n > 0 && n <= 64;
}
static uint32_t fnv(const uint8_t *s, uint32_t n) {
    uint32_t h = 2166136261u;
    for (uint32_t i = 0; i < n; i++) h = (h ^ s[i]) * 16777619u;
    return h;
}
static int tok_lookup(const Tokenizer *t, const uint8_t *s, uint32_t n) {
    for (uint32_t h = fnv(s, n) & (t->ht_size - 1);; h = (h + 1) & (t->ht_size - 1)) {
        int id = t->ht[h] - 1;
        if (id < 0) return -1;
        if (t->tok[id].len == n && memcmp(t->tok[id].s, s, n) == 0) return id;
    }
}

static const char *GPT4_PATTERNS[] = { /* GPT-4's split regex as tiktoken spells it, and as lmforge does */
    "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*|\\s*[\\r\\n]|"
    "\\s+(?!\\S)|\\s+",
    "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+"};

static void read_tokenizer(Cursor *c, Tokenizer *t, int vocab) {
    uint32_t n_tok = rd32(c), n_sp = rd32(c);
    check(n_tok >= 256 && n_tok <= (uint32_t)vocab, "tokenizer n_tokens %u is outside [256, vocab_size]", n_tok);
    check(n_sp <= MAX_SPECIAL && n_sp <= vocab - n_tok,
          "tokenizer n_special %u is outside [0, min(1024, vocab_size - n_tokens)]", n_sp);
    Str pat = rdstr(c);
    check(str_is(pat, GPT4_PATTERNS[0]) || str_is(pat, GPT4_PATTERNS[1]),
          "the tokenizer's split pattern is not GPT-4's, the only one this runner implements");
    check((uint64_t)n_tok * 5 <= (uint64_t)(c->end - c->p), "tokenizer n_tokens %u cannot fit in its section", n_tok);
    t->n_tokens = (int)n_tok;
    t->n_special = (int)n_sp;
    t->tok = xcalloc(n_tok, sizeof *t->tok);
    for (t->ht_size = 1; t->ht_size < 2 * t->n_tokens; t->ht_size *= 2) {}
    t->ht = xcalloc(t->ht_size, sizeof *t->ht);
    for (int i = 0; i < t->n_tokens; i++) {
        Str s = t->tok[i] = rdstr(c);
        check(s.len > 0, "tokenizer token %d is empty", i);
        int dup = tok_lookup(t, s.s, s.len);
        check(dup < 0, "tokenizer token %d repeats token %d", i, dup);
        uint32_t h = fnv(s.s, s.len) & (t->ht_size - 1);
        while (t->ht[h]) h = (h + 1) & (t->ht_size - 1);
        t->ht[h] = i + 1;
    }
    for (int b = 0; b < 256; b++) /* BPE starts from single bytes: a missing one would encode to no token at all */
        check(tok_lookup(t, &(uint8_t){(uint8_t)b}, 1) >= 0, "tokenizer has no token for the byte 0x%02x", b);
    t->sp = xcalloc(n_sp, sizeof *t->sp);
    t->sp_id = xcalloc(n_sp, sizeof *t->sp_id);
    const char *names[] = {"<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool_call|>",
                           "<|tool_call_end|>", "<|tool_output|>", "<|tool_output_end|>"};
    int *ids[] = {&t->bos, &t->end, &t->system, &t->user, &t->assistant, &t->call, &t->call_end, &t->output,
                  &t->output_end};
    for (int k = 0; k < 9; k++) *ids[k] = -1;
    for (int i = 0; i < t->n_special; i++) {
        uint32_t id = rd32(c);
        Str nm = rdstr(c);
        check(id >= n_tok && id < (uint32_t)vocab, "tokenizer special token %d has id %u outside [n_tokens, "
              "vocab_size)", i, id);
        check(printable(nm.s, nm.len), "tokenizer special token %d has a name that is not 1 to 64 printable ASCII "
              "bytes", i);
        for (int j = 0; j < i; j++)
            check(t->sp_id[j] != (int)id && !str_eq(t->sp[j], nm),
                  "tokenizer special token %d repeats the id or name of special token %d", i, j);
        t->sp_id[i] = (int)id;
        t->sp[i] = nm;
        for (int k = 0; k < 9; k++) if (*ids[k] < 0 && str_is(nm, names[k])) *ids[k] = (int)id;
    }
}

/* The tensor a table entry names and its shape; NULL when this model has no tensor of that name. */
static Tensor *tensor_slot(Model *m, Str nm, int *rows, int *cols) {
    int D = m->dim, H = m->hidden, kv = m->n_kv * m->hd, l = 0;
    if (str_is(nm, "tok_emb.weight")) { *rows = m->vocab, *cols = D; return &m->emb; }
    if (str_is(nm, "lm_head.weight") && !(m->flags & 1)) { *rows = m->vocab, *cols = D; return &m->head; }
    if (str_is(nm, "norm.weight")) { *rows = 1, *cols = D; return &m->norm; }
    uint32_t k = 7;
    if (nm.len < 8 || memcmp(nm.s, "layers.", 7) != 0) return NULL;
    while (k < nm.len && nm.s[k] >= '0' && nm.s[k] <= '9' && l < m->n_layer) l = 10 * l + (nm.s[k++] - '0');
    if (l >= m->n_layer) return NULL;
    Layer *L = &m->layers[l];
    struct { Tensor *t; const char *n; int r, c, qk; } spec[] = { /* qk: exists only with QK-norm */
        {&L->attn_norm, "attn_norm", 1, D, 0}, {&L->wq, "attn.wq", D, D, 0}, {&L->wk, "attn.wk", kv, D, 0},
        {&L->wv, "attn.wv", kv, D, 0}, {&L->wo, "attn.wo", D, D, 0}, {&L->q_norm, "attn.q_norm", 1, m->hd, 1},
        {&L->k_norm, "attn.k_norm", 1, m->hd, 1}, {&L->mlp_norm, "mlp_norm", 1, D, 0},
        {&L->gate, "mlp.w_gate", H, D, 0}, {&L->up, "mlp.w_up", H, D, 0}, {&L->down, "mlp.w_down", D, H, 0}};
    char name[64];
    for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
        snprintf(name, sizeof name, "layers.%d.%s.weight", l, spec[i].n);
        if (!str_is(nm, name) || (spec[i].qk && !(m->flags & 2))) continue;
        *rows = spec[i].r, *cols = spec[i].c;
        return spec[i].t;
    }
    return NULL;
}

/* Every entry of the table names a distinct tensor of this model, of its shape and dtype, wholly inside the data
   section; as n_tensors is exactly the model's count, no tensor is then missing. */
static void read_tensors(Cursor *c, Model *m, const uint8_t *base, uint64_t data_off, uint64_t size) {
    for (int i = 0; i < m->n_tensors; i++) {
        Str nm = rdstr(c);
        uint32_t dt = rd32(c), r = rd32(c), cl = rd32(c);
        uint64_t off = rd64(c), nbytes = rd64(c), n = (uint64_t)r * cl;
        int rows, cols, want;
        Tensor *t = tensor_slot(m, nm, &rows, &cols);
        check(t != NULL, "tensor table entry %d names no tensor of this model", i);
        const char *s = (const char *)nm.s; /* a known name from here on: safe to print */
        int len = (int)nm.len;
        check(t->data == NULL, "tensor %.*s appears twice in the table", len, s);
        check(r == (uint32_t)rows && cl == (uint32_t)cols, "tensor %.*s is %ux%u, expected %dx%d", len, s, r, cl, rows,
              cols);
        want = rows == 1 ? F32 : m->dtype; /* vectors (norm weights) are fp32, matrices the file's dtype */
        check(dt == (uint32_t)want, "tensor %.*s has dtype %u, expected %d", len, s, dt, want);
        uint64_t need = dt == F32 ? 4 * n : dt == Q8 ? n + 4 * (n / m->gs) : 2 * n;
        check(nbytes == need, "tensor %.*s holds %llu bytes, expected %llu", len, s, (unsigned long long)nbytes,
              (unsigned long long)need);
        check(off % 64 == 0 && off >= data_off && off <= size && nbytes <= size - off,
              "tensor %.*s lies outside the file's data section", len, s);
        const uint8_t *p = base + off;
        *t = (Tensor){(int)dt, rows, cols, m->gs, p, dt == Q8 ? (const float *)(p + n) : NULL};
        for (uint64_t g = 0; dt == Q8 && g < n / m->gs; g++) /* q * scale: a NaN or infinite scale poisons a group */
            check(finite_f32(t->scale[g]) && t->scale[g] >= 0, "tensor %.*s has a NaN, infinite or negative int8 scale",
                  len, s);
    }
}

static void load(const char *path, Model *m, Tokenizer *tk) {
    int fd = open(path, O_RDONLY | O_NONBLOCK); /* O_NONBLOCK: opening a FIFO must not wait for a writer */
    struct stat st;
    check(fd >= 0, "cannot open: %s", strerror(errno));
    check(fstat(fd, &st) == 0 && S_ISREG(st.st_mode), "not a regular file");
    uint64_t size = (uint64_t)st.st_size;
    uint8_t magic[4] = {0};
    check(pread(fd, magic, 4, 0) == 4 && memcmp(magic, "LMFG", 4) == 0, "not an lmforge parameter file (bad magic)");
    check(size >= 128, "truncated: %llu bytes, shorter than the 128-byte header", (unsigned long long)size);
    const uint8_t *base = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    check(base != MAP_FAILED, "cannot map the file into memory");
    Cursor c = {base + 4, base + 128, "header"};
    uint32_t version = rd32(&c), v;
    check(version == 1, "format version %u; this runner reads version 1", version);
    uint64_t file_size = rd64(&c);
    check(file_size == size, "truncated or damaged: %llu bytes, the header says %llu", (unsigned long long)size,
          (unsigned long long)file_size);
    int *ints[] = {&m->dim, &m->hidden, &m->n_layer, &m->n_head, &m->n_kv, &m->hd, &m->vocab, &m->seq_len,
                   &m->flags, &m->dtype, &m->gs, &m->n_tensors};
    for (int i = 0; i < 12; i++) {
        if (i == 8) { memcpy(&m->theta, take(&c, 4), 4); memcpy(&m->eps, take(&c, 4), 4); }
        check((v = rd32(&c)) >= FIELDS[i].lo && v <= FIELDS[i].hi, "header field %s = %u is outside [%u, %u]",
              FIELDS[i].name, v, FIELDS[i].lo, FIELDS[i].hi);
        *ints[i] = (int)v;
    }
    uint64_t tok_off = rd64(&c), tens_off = rd64(&c), data_off = rd64(&c);
    int qk = (m->flags & 2) != 0, n_expected = 2 + !(m->flags & 1) + m->n_layer * (9 + 2 * qk);
    const struct { int ok; const char *field, *rule; } rules[] = { /* what the fields say of each other */
        {m->n_head % m->n_kv == 0, "n_kv_head", "must divide n_head"},
        {m->hd % 2 == 0 && m->hd * m->n_head == m->dim, "head_dim", "must be even and equal dim / n_head"},
        {finite_f32(m->theta) && m->theta > 0, "rope_theta", "must be a finite number above 0"},
        {finite_f32(m->eps) && m->eps >= 0 && m->eps < 1, "norm_eps", "must be a finite number in [0, 1)"},
        {m->dtype == Q8 ? m->gs > 0 && m->gs % 4 == 0 && m->dim % m->gs == 0 && m->hidden % m->gs == 0 : m->gs == 0,
         "group_size", "must be 0, or for int8 a multiple of 4 that divides dim and hidden_dim"},
        {m->n_tensors == n_expected, "n_tensors", "differs from the model's tensor count"},
        {tok_off == 128, "tokenizer_offset", "must be 128"},
        {tens_off >= tok_off && tens_off <= size, "tensors_offset", "must lie in [tokenizer_offset, file_size]"},
        {data_off % 64 == 0 && data_off >= tens_off && data_off <= size, "data_offset",
         "must be a multiple of 64 in [tensors_offset, file_size]"}};
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++)
        check(rules[i].ok, "header field %s %s", rules[i].field, rules[i].rule);
    Cursor tc = {base + tok_off, base + tens_off, "tokenizer section"}, table = {base + tens_off, base + data_off,
                                                                                  "tensor table"};
    read_tokenizer(&tc, tk, m->vocab);
    m->layers = xcalloc(m->n_layer, sizeof(Layer));
    read_tensors(&table, m, base, data_off, size);
    if (m->flags & 1) m->head = m->emb;
}

/* ---------------------------------------------------------------- forward pass */
typedef struct { float *x, *xb, *xb2, *q, *hb, *hb2, *att, *logits, *kc, *vc, *cos, *sin, *xs; int8_t *xq; } State;

static void init_state(State *s, const Model *m) {
    size_t T = m->seq_len, W = m->hidden > m->dim ? m->hidden : m->dim, kv = (size_t)m->n_kv * m->hd;
    s->x = xcalloc(T * m->dim, 4); s->xb = xcalloc(T * m->dim, 4); s->xb2 = xcalloc(T * m->dim, 4);
    s->q = xcalloc(T * m->dim, 4); s->hb = xcalloc(T * m->hidden, 4); s->hb2 = xcalloc(T * m->hidden, 4);
    s->att = xcalloc((size_t)m->n_head * T, 4); s->logits = xcalloc(m->vocab, 4);
    s->kc = xcalloc((size_t)m->n_layer * T * kv, 4); s->vc = xcalloc((size_t)m->n_layer * T * kv, 4);
    s->xq = xcalloc(T * W, 1); s->xs = xcalloc(T * W, 4);
    s->cos = xcalloc(T * m->hd / 2, 4); s->sin = xcalloc(T * m->hd / 2, 4);
    for (size_t p = 0; p < T; p++) /* as lmforge.model.rope_tables: angles in double, then rounded to float */
        for (int i = 0; i < m->hd / 2; i++) {
            double a = (double)p / pow((double)m->theta, (double)(2 * i) / m->hd);
            s->cos[p * m->hd / 2 + i] = (float)cos(a);
            s->sin[p * m->hd / 2 + i] = (float)sin(a);
        }
}

/* out[t][i] = W[i] . x[t] for T rows of x: each weight row is read once and used for every row of x. */
static void matmul(State *s, float *out, const float *x, const Tensor *W, int T) {
    int n = W->cols, d = W->rows, gs = W->gs;
    for (int t = 0; W->dtype == Q8 && t < T; t++) /* int8: quantize the activations once, then integer dots per group */
        quantize_row(s->xq + (size_t)t * n, s->xs + (size_t)t * n / gs, x + (size_t)t * n, n, gs);
#define ROWS(DOT) \
    PFOR((long)d * n * T) for (int i = 0; i < d; i++) for (int t = 0; t < T; t++) out[(size_t)t * d + i] = DOT;
#define W_ROW(type) (const type *)w + (size_t)i * n
    const void *w = W->data;
    if (W->dtype == F32) ROWS(dot_f32(W_ROW(float), x + (size_t)t * n, n))
    else if (W->dtype == F16) ROWS(dot_f16(W_ROW(uint16_t), x + (size_t)t * n, n))
    else if (W->dtype == BF16) ROWS(dot_bf16(W_ROW(uint16_t), x + (size_t)t * n, n))
    else ROWS(dot_q8(W_ROW(int8_t), W->scale + (size_t)i * n / gs, s->xq + (size_t)t * n, s->xs + (size_t)t * n / gs,
                     n, gs))
}

static void embed(float *out, const Tensor *E, int token) {
    size_t n = E->cols, o = (size_t)token * n;
    for (size_t j = 0; j < n; j++)
        switch (E->dtype) {
        case F32: out[j] = ((const float *)E->data)[o + j]; break;
        case F16: out[j] = f16_f32(((const uint16_t *)E->data)[o + j]); break;
        case BF16: out[j] = bf16_f32(((const uint16_t *)E->data)[o + j]); break;
        default: out[j] = ((const int8_t *)E->data)[o + j] * E->scale[(o + j) / E->gs];
        }
}

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    float ss = 0.0f;
    for (int j = 0; j < n; j++) ss += x[j] * x[j];
    float r = 1.0f / sqrtf(ss / n + eps);
    for (int j = 0; j < n; j++) out[j] = x[j] * r * w[j];
}

/* Head vectors (n_heads of hd at v) of the token at position pos: optional per-head RMSNorm, then RoPE. */
static void qk_prepare(const Model *m, const State *s, float *v, int n_heads, const Tensor *norm, int pos) {
    int half = m->hd / 2;
    const float *c = s->cos + (size_t)pos * half, *sn = s->sin + (size_t)pos * half;
    for (int h = 0; h < n_heads; h++) {
        float *q = v + (size_t)h * m->hd;
        if (norm->data) rmsnorm(q, q, norm->data, m->hd, m->eps);
        for (int i = 0; i < half; i++) {
            float a = q[i], b = q[i + half];
            q[i] = a * c[i] - b * sn[i];
            q[i + half] = b * c[i] + a * sn[i];
        }
    }
}

/* Run T tokens at positions pos..pos+T-1 through the model (filling the KV cache); logits of the last one. */
static float *forward(const Model *m, State *s, const int *tokens, int T, int pos) {
    int D = m->dim, hd = m->hd, kvd = m->n_kv * hd, H = m->hidden, rep = m->n_head / m->n_kv;
    for (int t = 0; t < T; t++) embed(s->x + (size_t)t * D, &m->emb, tokens[t]);
    for (int l = 0; l < m->n_layer; l++) {
        const Layer *L = &m->layers[l];
        float *kc = s->kc + (size_t)l * m->seq_len * kvd, *vc = s->vc + (size_t)l * m->seq_len * kvd;
        for (int t = 0; t < T; t++) rmsnorm(s->xb + (size_t)t * D, s->x + (size_t)t * D, L->attn_norm.data, D, m->eps);
        matmul(s, s->q, s->xb, &L->wq, T);
        matmul(s, kc + (size_t)pos * kvd, s->xb, &L->wk, T); /* K and V go straight into the cache */
        matmul(s, vc + (size_t)pos * kvd, s->xb, &L->wv, T);
        for (int t = 0; t < T; t++) {
            qk_prepare(m, s, s->q + (size_t)t * D, m->n_head, &L->q_norm, pos + t);
            qk_prepare(m, s, kc + (size_t)(pos + t) * kvd, m->n_kv, &L->k_norm, pos + t);
        }
        float scale = 1.0f / sqrtf((float)hd);
        PFOR((long)m->n_head * T * (pos + T) * hd) for (int h = 0; h < m->n_head; h++) {
            float *att = s->att + (size_t)h * m->seq_len;
            for (int t = 0; t < T; t++) {
                const float *q = s->q + (size_t)t * D + (size_t)h * hd;
                int last = pos + t, kvh = h / rep;
                float mx = -INFINITY, sum = 0.0f;
                for (int j = 0; j <= last; j++) {
                    att[j] = dot_f32(kc + (size_t)j * kvd + (size_t)kvh * hd, q, hd) * scale;
                    mx = fmaxf(mx, att[j]);
                }
                for (int j = 0; j <= last; j++) sum += att[j] = expf(att[j] - mx);
                float *o = s->xb2 + (size_t)t * D + (size_t)h * hd;
                memset(o, 0, hd * sizeof(float));
                for (int j = 0; j <= last; j++) {
                    const float *v = vc + (size_t)j * kvd + (size_t)kvh * hd;
                    float a = att[j] / sum;
                    for (int i = 0; i < hd; i++) o[i] += a * v[i];
                }
            }
        }
        matmul(s, s->xb, s->xb2, &L->wo, T);
        for (size_t i = 0; i < (size_t)T * D; i++) s->x[i] += s->xb[i];
        for (int t = 0; t < T; t++) rmsnorm(s->xb + (size_t)t * D, s->x + (size_t)t * D, L->mlp_norm.data, D, m->eps);
        matmul(s, s->hb, s->xb, &L->gate, T);
        matmul(s, s->hb2, s->xb, &L->up, T);
        for (size_t i = 0; i < (size_t)T * H; i++) s->hb[i] = s->hb[i] / (1.0f + expf(-s->hb[i])) * s->hb2[i];
        matmul(s, s->xb, s->hb, &L->down, T);
        for (size_t i = 0; i < (size_t)T * D; i++) s->x[i] += s->xb[i];
    }
    rmsnorm(s->xb, s->x + (size_t)(T - 1) * D, m->norm.data, D, m->eps); /* only the last position's logits */
    matmul(s, s->logits, s->xb, &m->head, 1);
    return s->logits;
}

/* ---------------------------------------------------------------- tokenizer: GPT-4 pre-tokenizer and BPE */
enum { CL_L, CL_N, CL_S, CL_O }; /* letter, number, whitespace, anything else */
typedef struct { uint32_t lo, hi; int cls; } Range;
static const Range RANGES[] = { /* non-ASCII code points that are not letters; sorted; everything else: letter */
    {0x80, 0x84, CL_O}, {0x85, 0x85, CL_S}, {0x86, 0x9f, CL_O}, {0xa0, 0xa0, CL_S}, {0xa1, 0xa9, CL_O},
    {0xab, 0xb1, CL_O}, {0xb2, 0xb3, CL_N}, {0xb4, 0xb4, CL_O}, {0xb6, 0xb8, CL_O}, {0xb9, 0xb9, CL_N},
    {0xbb, 0xbb, CL_O}, {0xbc, 0xbe, CL_N}, {0xbf, 0xbf, CL_O}, {0xd7, 0xd7, CL_O}, {0xf7, 0xf7, CL_O},
    {0x2c2, 0x2c5, CL_O}, {0x2d2, 0x2df, CL_O}, {0x2e5, 0x2eb, CL_O}, {0x2ed, 0x2ed, CL_O}, {0x2ef, 0x36f, CL_O},
    {0x37e, 0x37e, CL_O}, {0x384, 0x385, CL_O}, {0x387, 0x387, CL_O}, {0x482, 0x489, CL_O}, {0x55a, 0x55f, CL_O},
    {0x589, 0x58a, CL_O}, {0x591, 0x5c7, CL_O}, {0x5f3, 0x5f4, CL_O}, {0x600, 0x61f, CL_O}, {0x64b, 0x65f, CL_O},
    {0x660, 0x669, CL_N}, {0x66a, 0x66d, CL_O}, {0x6d4, 0x6d4, CL_O}, {0x6f0, 0x6f9, CL_N}, {0x1680, 0x1680, CL_S},
    {0x2000, 0x200a, CL_S}, {0x200b, 0x2027, CL_O}, {0x2028, 0x2029, CL_S}, {0x202a, 0x202e, CL_O},
    {0x202f, 0x202f, CL_S}, {0x2030, 0x205e, CL_O}, {0x205f, 0x205f, CL_S}, {0x2060, 0x206f, CL_O},
    {0x2070, 0x2070, CL_N}, {0x2074, 0x2079, CL_N}, {0x207a, 0x207e, CL_O}, {0x2080, 0x2089, CL_N},
    {0x208a, 0x208e, CL_O}, {0x20a0, 0x20ff, CL_O}, {0x2150, 0x2182, CL_N}, {0x2185, 0x2189, CL_N},
    {0x2190, 0x245f, CL_O}, {0x2460, 0x249b, CL_N}, {0x249c, 0x24e9, CL_O}, {0x24ea, 0x24ff, CL_N},
    {0x2500, 0x2775, CL_O}, {0x2776, 0x2793, CL_N}, {0x2794, 0x2bff, CL_O}, {0x2e00, 0x2e7f, CL_O},
    {0x3000, 0x3000, CL_S}, {0x3001, 0x3004, CL_O}, {0x3007, 0x3007, CL_N}, {0x3008, 0x3020, CL_O},
    {0x3021, 0x3029, CL_N}, {0x302a, 0x3030, CL_O}, {0x3099, 0x309c, CL_O}, {0x30a0, 0x30a0, CL_O},
    {0x30fb, 0x30fb, CL_O}, {0x3200, 0x33ff, CL_O}, {0xe000, 0xf8ff, CL_O}, {0xfe00, 0xfe0f, CL_O},
    {0xfe30, 0xfe6f, CL_O}, {0xfeff, 0xfeff, CL_O}, {0xff01, 0xff0f, CL_O}, {0xff10, 0xff19, CL_N},
    {0xff1a, 0xff20, CL_O}, {0xff3b, 0xff40, CL_O}, {0xff5b, 0xff65, CL_O}, {0xffe0, 0xffff, CL_O},
    {0x1f000, 0x1faff, CL_O}, {0xe0000, 0x10ffff, CL_O}};

/* Class and byte length of the character at s[i] (invalid UTF-8: one byte of class "other"). */
static int char_class(const uint8_t *s, int i, int n, int *len) {
    uint32_t c = s[i];
    *len = 1;
    if (c < 0x80) {
        if (c == ' ' || (c >= 9 && c <= 13)) return CL_S;
        if (c >= '0' && c <= '9') return CL_N;
        return ((c | 32) >= 'a' && (c | 32) <= 'z') ? CL_L : CL_O;
    }
    int k = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
    if (k == 1 || c > 0xf4 || i + k > n) return CL_O;
    c &= 0x3f >> (k - 1);
    for (int j = 1; j < k; j++) {
        if ((s[i + j] & 0xc0) != 0x80) return CL_O;
        c = (c << 6) | (s[i + j] & 0x3f);
    }
    *len = k;
    if (c >= 0x900 && c < 0xe00) { /* the Indic blocks share one layout: signs, vowel signs, then digits */
        uint32_t o = c & 0x7f;
        if (o >= 0x66 && o <= 0x6f) return CL_N;
        return o <= 0x03 || (o >= 0x3a && o <= 0x3c) || (o >= 0x3e && o <= 0x57 && o != 0x50) || o == 0x62 ||
               o == 0x63 || o == 0x64 || o == 0x65 ? CL_O : CL_L;
    }
    int lo = 0, hi = (int)(sizeof RANGES / sizeof RANGES[0]) - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < RANGES[mid].lo) hi = mid - 1;
        else if (c > RANGES[mid].hi) lo = mid + 1;
        else return RANGES[mid].cls;
    }
    return CL_L;
}
static int cls_at(const uint8_t *s, int i, int n) { int len; return i < n ? char_class(s, i, n, &len) : -1; }
static int is_nl(const uint8_t *s, int i, int n) { return i < n && (s[i] == '\r' || s[i] == '\n'); }
static int skip_class(const uint8_t *s, int i, int n, int cls, int max) {
    int len;
    for (int k = 0; i < n && k < max && char_class(s, i, n, &len) == cls; k++) i += len;
    return i;
}

/* End of the chunk that GPT-4's split regex matches at s[i] (alternatives tried in the regex's order). */
static int next_chunk(const uint8_t *s, int i, int n) {
    int len, c = char_class(s, i, n, &len);
    if (s[i] == '\'' && i + 1 < n) { /* '(?i:[sdmt]|ll|ve|re) */
        int a = s[i + 1] | 32, b = i + 2 < n ? s[i + 2] | 32 : 0;
        if (a == 's' || a == 'd' || a == 'm' || a == 't') return i + 2;
        if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e')) return i + 3;
    }
    if (c == CL_L) return skip_class(s, i, n, CL_L, n); /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (c != CL_N && !is_nl(s, i, n) && cls_at(s, i + len, n) == CL_L) return skip_class(s, i + len, n, CL_L, n);
    if (c == CL_N) return skip_class(s, i, n, CL_N, 3); /* \p{N}{1,3} */
    int j = (s[i] == ' ' && cls_at(s, i + 1, n) == CL_O) ? i + 1 : i; /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
    if (cls_at(s, j, n) == CL_O) {
        j = skip_class(s, j, n, CL_O, n);
        while (is_nl(s, j, n)) j++;
        return j;
    }
    int last = i, nl_end = -1; /* whitespace run: \s*[\r\n], \s+(?!\S), \s+ */
    for (j = i; j < n && char_class(s, j, n, &len) == CL_S; j += len) {
        last = j;
        if (is_nl(s, j, n)) nl_end = j + 1;
    }
    if (nl_end > 0) return nl_end;
    if (j == n || last == i) return j;
    return last;
}

typedef struct { int rank, pos, llen, rlen; } Cand; /* a candidate merge of the pieces at pos and after it */
static int cand_less(Cand a, Cand b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }
static void heap_push(Cand *h, int *n, Cand c) {
    int i = (*n)++;
    for (; i > 0 && cand_less(c, h[(i - 1) / 2]); i = (i - 1) / 2) h[i] = h[(i - 1) / 2];
    h[i] = c;
}
static Cand heap_pop(Cand *h, int *n) {
    Cand top = h[0], last = h[--*n];
    int i = 0;
    for (int c; (c = 2 * i + 1) < *n; i = c) {
        if (c + 1 < *n && cand_less(h[c + 1], h[c])) c++;
        if (!cand_less(h[c], last)) break;
        h[i] = h[c];
    }
    h[i] = last;
    return top;
}

/* Queue the merge of the pieces at a and b (adjacent) if their concatenation is a token. */
static void push_pair(const Tokenizer *t, const uint8_t *s, const int *plen, int a, int b, Cand *heap, int *nh) {
    int rank = tok_lookup(t, s + a, (uint32_t)(plen[a] + plen[b]));
    if (rank >= 0) heap_push(heap, nh, (Cand){rank, a, plen[a], plen[b]});
}
/* BPE of one chunk: pieces are byte spans [pos, pos+len) linked left to right; a heap keyed by (rank, position)
   applies the lowest-ranked merge first, leftmost on ties; stale heap entries are recognised by their lengths. */
static int bpe(const Tokenizer *t, const uint8_t *s, int n, int *out, int *plen, int *next, Cand *heap) {
    int id = tok_lookup(t, s, (uint32_t)n), nh = 0, k = 0;
    if (id >= 0) { out[0] = id; return 1; }
    for (int i = 0; i < n; i++) { plen[i] = 1; next[i] = i + 1; }
    for (int i = 0; i + 1 < n; i++) push_pair(t, s, plen, i, i + 1, heap, &nh);
    while (nh > 0) {
        Cand c = heap_pop(heap, &nh);
        int r = next[c.pos], prev = c.pos - 1;
        if (plen[c.pos] != c.llen || r >= n || plen[r] != c.rlen) continue;
        plen[c.pos] += plen[r];
        plen[r] = 0;
        next[c.pos] = next[r];
        while (prev >= 0 && !plen[prev]) prev--;
        if (prev >= 0) push_pair(t, s, plen, prev, c.pos, heap, &nh);
        if (next[c.pos] < n) push_pair(t, s, plen, c.pos, next[c.pos], heap, &nh);
    }
    for (int i = 0; i < n; i = next[i]) out[k++] = tok_lookup(t, s + i, (uint32_t)plen[i]);
    return k;
}

/* Ordinary text -> ids (special-token names in the text stay ordinary text, as in the Python tokenizer). */
static int encode(const Tokenizer *t, const char *text, int *out) {
    const uint8_t *s = (const uint8_t *)text;
    int n = (int)strlen(text), k = 0;
    int *plen = xcalloc(n, sizeof(int)), *next = xcalloc(n, sizeof(int));
    Cand *heap = xcalloc(2 * (size_t)n + 2, sizeof(Cand));
    for (int i = 0, e; i < n; i = e) {
        e = next_chunk(s, i, n);
        k += bpe(t, s + i, e - i, out + k, plen, next, heap);
    }
    free(plen); free(next); free(heap);
    return k;
}

/* Streaming output that never splits a UTF-8 character: the bytes of an unfinished character wait for the next
   token. Ill-formed bytes print as U+FFFD, one per maximal ill-formed subpart, as Python's errors="replace". */
typedef struct { uint8_t pend[4]; int np, need; uint8_t *buf; size_t nbuf, cap; } Utf8Out;
static void out_put(Utf8Out *u, const uint8_t *b, size_t n) {
    if (u->nbuf + n > u->cap && !(u->buf = realloc(u->buf, u->cap = 2 * (u->nbuf + n)))) die("out of memory");
    memcpy(u->buf + u->nbuf, b, n);
    u->nbuf += n;
}
static void out_byte(Utf8Out *u, uint8_t c) {
    static const uint8_t bad[3] = {0xef, 0xbf, 0xbd};
    if (u->np > 0) {
        uint8_t lead = u->pend[0], lo = 0x80, hi = 0xbf; /* the second byte's range excludes overlongs, surrogates */
        if (u->np == 1 && (lead == 0xe0 || lead == 0xf0)) lo = lead == 0xe0 ? 0xa0 : 0x90;
        if (u->np == 1 && (lead == 0xed || lead == 0xf4)) hi = lead == 0xed ? 0x9f : 0x8f;
        if (c >= lo && c <= hi) {
            u->pend[u->np++] = c;
            if (u->np == u->need) { out_put(u, u->pend, u->np); u->np = 0; }
            return;
        }
        out_put(u, bad, 3);
        u->np = 0;
    }
    if (c < 0x80) out_put(u, &c, 1);
    else if (c >= 0xc2 && c <= 0xf4) { u->pend[0] = c; u->np = 1; u->need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2; }
    else out_put(u, bad, 3);
}
/* What token `id` stands for: its bytes, or a special token's name (nothing for an id that is neither). */
static Str token_str(const Tokenizer *t, int id) {
    if (id < t->n_tokens) return t->tok[id];
    for (int i = 0; i < t->n_special; i++) if (t->sp_id[i] == id) return t->sp[i];
    return (Str){(const uint8_t *)"", 0};
}
/* Print a token (unless !show: a chat hides special tokens and tool calls) and, with -v, log it to stderr. */
static void emit_token(Utf8Out *u, const Tokenizer *t, int id, int verbose, int show) {
    Str b = token_str(t, id);
    u->nbuf = 0;
    if (show && id < t->n_tokens) for (uint32_t i = 0; i < b.len; i++) out_byte(u, b.s[i]);
    else if (show) out_put(u, b.s, b.len);
    fwrite(u->buf, 1, u->nbuf, stdout);
    fflush(stdout);
    if (verbose) {
        fprintf(stderr, "token %d:", id);
        for (size_t i = 0; i < u->nbuf; i++) fprintf(stderr, " %02x", u->buf[i]);
        fputc('\n', stderr);
    }
}

/* ---------------------------------------------------------------- sampling */
typedef struct { float p; int i; } ProbIndex;
static uint64_t rng_state;
static float rand_f32(void) { /* xorshift64*, top 24 bits */
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (float)((rng_state * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
}
static int cmp_prob(const void *a, const void *b) {
    float d = ((const ProbIndex *)b)->p - ((const ProbIndex *)a)->p;
    return (d > 0) - (d < 0);
}
static int sample(float *logits, int n, float temp, float topp, ProbIndex *buf) {
    int best = 0;
    for (int i = 1; i < n; i++) if (logits[i] > logits[best]) best = i;
    if (temp == 0.0f) return best;
    float mx = logits[best], sum = 0.0f;
    for (int i = 0; i < n; i++) sum += logits[i] = expf((logits[i] - mx) / temp);
    for (int i = 0; i < n; i++) logits[i] /= sum;
    float r = rand_f32(), cdf = 0.0f;
    if (topp <= 0.0f || topp >= 1.0f) {
        for (int i = 0; i < n; i++) if (r < (cdf += logits[i])) return i;
        return n - 1;
    }
    /* nucleus: the smallest set of most likely tokens whose mass reaches topp (tokens below (1-topp)/(n-1)
       cannot be in it, which keeps the sort short) */
    int k = 0;
    float cutoff = (1.0f - topp) / (n - 1), mass = 0.0f;
    for (int i = 0; i < n; i++) if (logits[i] >= cutoff) buf[k++] = (ProbIndex){logits[i], i};
    qsort(buf, k, sizeof *buf, cmp_prob);
    int last = k - 1;
    for (int i = 0; i < k; i++) if ((mass += buf[i].p) > topp) { last = i; break; }
    if (k == 0) return best;
    r *= mass;
    for (int i = 0; i <= last; i++) if (r < (cdf += buf[i].p)) return buf[i].i;
    return buf[last].i;
}

/* ---------------------------------------------------------------- the calculator tool */
/* lmforge.inference.tools.calculate for what a chat asks of it: numbers (Python's literals: 1_000, 2.5, .5, 1e3),
   + - * / // % ** and parentheses, with Python's semantics (int / int is a float, // and % round toward -inf, -2**2
   is -4, int ** int is an int) and its refusals, in the same words and the same order (the expression is parsed
   as a tree and checked depth first, left before right, as tools.py walks Python's ast). Two differences, both
   refusals: integers beyond 64 bits (Python's go to 4096 bits) and sqrt/abs/round/pi/e; tests/test_runner.py
   runs both calculators on one table. Never evaluates anything but arithmetic: a tree of at most CALC_NODES. */
enum { CALC_CHARS = 256, CALC_DEPTH = 50, CALC_NODES = 2 * CALC_CHARS + 2 };
typedef struct { int is_int; long long i; double f; } Num;
typedef struct { char op; int a, b; Num v; } Node; /* op: n number, v name and c call (a, b: offset, length), u/p
                                                       unary -/+ (a), x ^, else a binary operator on a, b */
typedef struct { const char *s; int pos, n_nodes; Node node[CALC_NODES]; char err[160]; } Calc;

static int calc_fail(Calc *c, const char *fmt, ...) {
    if (!c->err[0]) { va_list ap; va_start(ap, fmt); vsnprintf(c->err, sizeof c->err, fmt, ap); va_end(ap); }
    return -1;
}
static int calc_node(Calc *c, char op, int a, int b) {
    if (a < 0 || b < 0) return -1;
    if (c->n_nodes == CALC_NODES) return calc_fail(c, "syntax error: too many nested parentheses");
    c->node[c->n_nodes] = (Node){op, a, b, {0, 0, 0}};
    return c->n_nodes++;
}
static void calc_space(Calc *c) { while (c->s[c->pos] && strchr(" \t\n\r\f\v", c->s[c->pos])) c->pos++; }
static int calc_eat(Calc *c, const char *tok) { /* the operator `tok`, not the start of a longer one */
    size_t n = strlen(tok);
    calc_space(c);
    if (strncmp(c->s + c->pos, tok, n) || (n == 1 && strchr("*/", *tok) && c->s[c->pos + 1] == *tok)) return 0;
    c->pos += (int)n;
    return 1;
}
static int calc_digits(const char *s, int i) { /* digit ('_'? digit)*: the end of the run, or -1 when malformed */
    if (s[i] < '0' || s[i] > '9') return -1;
    while ((s[i] >= '0' && s[i] <= '9') || (s[i] == '_' && s[i + 1] >= '0' && s[i + 1] <= '9')) i++;
    return s[i] == '_' ? -1 : i;
}
static int calc_number(Calc *c) {
    const char *s = c->s;
    int i = c->pos, e = s[i] == '.' ? i : calc_digits(s, i), is_int = 1;
    char buf[CALC_CHARS + 1];
    if (e < 0) return calc_fail(c, "syntax error: invalid decimal literal");
    if (s[e] == '.') { is_int = 0; e++; if (s[e] >= '0' && s[e] <= '9') e = calc_digits(s, e); }
    if (s[e] == 'e' || s[e] == 'E') { is_int = 0; e++; e = calc_digits(s, e + (s[e] == '+' || s[e] == '-')); }
    if (e < 0 || isalnum((unsigned char)s[e]) || s[e] == '_' || s[e] == '.')
        return calc_fail(c, "syntax error: invalid decimal literal");
    int n = 0, zeros = 1;
    for (int j = i; j < e; j++) if (s[j] != '_') { buf[n++] = s[j]; zeros &= s[j] == '0'; }
    buf[n] = 0;
    if (is_int && buf[0] == '0' && !zeros) return calc_fail(c, "syntax error: leading zeros in decimal integer literals "
                                                              "are not permitted");
    int k = calc_node(c, 'n', 0, 0);
    if (k < 0) return k;
    errno = 0;
    c->node[k].v = (Num){is_int, is_int ? strtoll(buf, NULL, 10) : 0, is_int ? 0.0 : strtod(buf, NULL)};
    if (is_int && errno) return calc_fail(c, "integer beyond the 64 bits of the C runner's calculator");
    c->pos = e;
    return k;
}
static int calc_xor(Calc *c);
static int calc_unary(Calc *c);
static int calc_atom(Calc *c) { /* number | '(' xor ')' | name | name '(' xor {',' xor} ')' */
    calc_space(c);
    const char *s = c->s + c->pos;
    if ((*s >= '0' && *s <= '9') || (*s == '.' && s[1] >= '0' && s[1] <= '9')) return calc_number(c);
    if (calc_eat(c, "(")) {
        int k = calc_xor(c);
        return k >= 0 && calc_eat(c, ")") ? k : calc_fail(c, "syntax error: invalid syntax");
    }
    int n = 0;
    while (isalnum((unsigned char)s[n]) || s[n] == '_') n++;
    if (n == 0 || isdigit((unsigned char)*s)) return calc_fail(c, "syntax error: invalid syntax");
    int k = calc_node(c, 'v', c->pos, n);
    c->pos += n;
    if (k < 0 || !calc_eat(c, "(")) return k;
    c->node[k].op = 'c';
    do if (calc_xor(c) < 0) return -1; while (calc_eat(c, ","));
    return calc_eat(c, ")") ? k : calc_fail(c, "syntax error: invalid syntax");
}
static int calc_power(Calc *c) { /* atom ['**' unary]: right-associative, binds tighter than a unary minus on its left */
    int k = calc_atom(c);
    return k >= 0 && calc_eat(c, "**") ? calc_node(c, '^', k, calc_unary(c)) : k;
}
static int calc_unary(Calc *c) {
    int k;
    if (calc_eat(c, "-")) return k = calc_unary(c), calc_node(c, 'u', k, k);
    if (calc_eat(c, "+")) return k = calc_unary(c), calc_node(c, 'p', k, k);
    return calc_power(c);
}
static int calc_term(Calc *c) {
    int k = calc_unary(c);
    for (char op; k >= 0 && ((op = calc_eat(c, "//") ? 'f' : calc_eat(c, "*") ? '*' : calc_eat(c, "/") ? '/'
                                   : calc_eat(c, "%") ? '%' : 0));)
        k = calc_node(c, op, k, calc_unary(c));
    return k;
}
static int calc_sum(Calc *c) {
    int k = calc_term(c);
    for (char op; k >= 0 && ((op = calc_eat(c, "+") ? '+' : calc_eat(c, "-") ? '-' : 0));) k = calc_node(c, op, k, calc_term(c));
    return k;
}
static int calc_xor(Calc *c) { /* Python parses '^' (below + and -) and the calculator refuses it with a hint */
    int k = calc_sum(c);
    while (k >= 0 && calc_eat(c, "^")) k = calc_node(c, 'x', k, calc_sum(c));
    return k;
}

static double as_f(Num a) { return a.is_int ? (double)a.i : a.f; }
static int calc_int_op(Calc *c, char op, long long a, long long b, Num *out) {
    long long r = 0, q;
    int over = 0;
    if (op == '+') over = __builtin_add_overflow(a, b, &r);
    else if (op == '-') over = __builtin_sub_overflow(a, b, &r);
    else if (op == '*') over = __builtin_mul_overflow(a, b, &r);
    else if (op == '^') for (r = 1; b-- > 0 && !over;) over = __builtin_mul_overflow(r, a, &r);
    else if (a == LLONG_MIN && b == -1) over = 1;
    else { q = a / b, r = a % b; if (r && (r < 0) != (b < 0)) r += b, q--; if (op == 'f') r = q; } /* floor, as Python */
    *out = (Num){1, r, 0};
    return over ? calc_fail(c, "integer beyond the 64 bits of the C runner's calculator") : 0;
}
static int calc_binary(Calc *c, char op, Num a, Num b, Num *out) {
    double x = as_f(a), y = as_f(b), m, d;
    if (op == '^' && fabs(y) > 10000) return calc_fail(c, "exponent too large");
    if (op == '^' && a.is_int && b.is_int && b.i > 0) {
        int bits = 0;
        for (unsigned long long u = a.i < 0 ? 0ull - (unsigned long long)a.i : (unsigned long long)a.i; u; u >>= 1) bits++;
        if ((double)bits * b.i > 4096) return calc_fail(c, "result too large");
    }
    if ((op == '^' && x == 0 && y < 0) || (strchr("/f%", op) && y == 0)) return calc_fail(c, "division by zero");
    if (a.is_int && b.is_int && op != '/' && (op != '^' || b.i >= 0)) return calc_int_op(c, op, a.i, b.i, out);
    switch (op) { /* floats; // and % as CPython's float_floor_div and float_rem */
    case '+': m = x + y; break;
    case '-': m = x - y; break;
    case '*': m = x * y; break;
    case '/': m = x / y; break;
    case '^': if (x < 0 && y != floor(y)) return calc_fail(c, "result is not a real number");
        m = pow(x, y); break;
    default: m = fmod(x, y), d = (x - m) / y;
        if (m && (y < 0) != (m < 0)) m += y, d -= 1.0;
        if (op == '%') m = m ? m : copysign(0.0, y);
        else m = d ? floor(d) + (d - floor(d) > 0.5) : copysign(0.0, x / y);
    }
    *out = (Num){0, 0, m};
    return isfinite(m) ? 0 : calc_fail(c, "result too large");
}
static int calc_eval(Calc *c, int k, int depth, Num *out) {
    Node *nd = &c->node[k];
    Num a, b;
    if (depth > CALC_DEPTH) return calc_fail(c, "expression nested too deeply");
    if (nd->op == 'n') { *out = nd->v; return 0; }
    if (nd->op == 'x') return calc_fail(c, "use ** for powers");
    if (nd->op == 'v' || nd->op == 'c') {
        const char *name = c->s + nd->a, *known[] = {"sqrt", "abs", "round", "pi", "e"};
        for (int i = 0; i < 5; i++)
            if (strlen(known[i]) == (size_t)nd->b && !strncmp(name, known[i], nd->b))
                return calc_fail(c, "%s is not in the C runner's calculator (numbers, + - * / // %% ** and parentheses)",
                                 known[i]);
        return nd->op == 'c' ? calc_fail(c, "not arithmetic: function call (only sqrt, abs, round)")
                             : calc_fail(c, "not arithmetic: name '%.*s'", nd->b, name);
    }
    if (calc_eval(c, nd->a, depth + 1, &a)) return -1;
    if (nd->op == 'p' || nd->op == 'u') {
        *out = a;
        if (nd->op == 'u' && a.is_int && __builtin_sub_overflow(0, a.i, &out->i))
            return calc_fail(c, "integer beyond the 64 bits of the C runner's calculator");
        if (nd->op == 'u' && !a.is_int) out->f = -a.f;
        return 0;
    }
    return calc_eval(c, nd->b, depth + 1, &b) ? -1 : calc_binary(c, nd->op, a, b, out);
}
/* The calculator's answer to `expr` as the text the model reads: the number, or "error: ...". */
static void calculate(const char *expr, char *out, size_t cap) {
    static const char *symbols[3][2] = {{"\xc3\x97", "*"}, {"\xc3\xb7", "/"}, {"\xe2\x88\x92", "-"}}; /* x : - */
    static Calc c;
    char text[4 * CALC_CHARS + 8];
    size_t n = 0, chars = 0;
    while (*expr && strchr(" \t\n\r\f\v", *expr)) expr++;
    while (*expr && n < sizeof text - 1) { /* Python's str.translate of the three symbols */
        int k = 0;
        while (k < 3 && strncmp(expr, symbols[k][0], strlen(symbols[k][0]))) k++;
        text[n++] = k < 3 ? symbols[k][1][0] : *expr;
        expr += k < 3 ? strlen(symbols[k][0]) : 1;
    }
    while (n > 0 && strchr(" \t\n\r\f\v", text[n - 1])) n--;
    text[n] = 0;
    for (size_t i = 0; i < n; i++) chars += ((unsigned char)text[i] & 0xc0) != 0x80; /* characters, not bytes */
    memset(&c, 0, sizeof c);
    c.s = text;
    Num r;
    int k = n == 0 ? calc_fail(&c, "empty expression")
          : chars > CALC_CHARS || *expr ? calc_fail(&c, "expression longer than %d characters", CALC_CHARS)
          : calc_xor(&c);
    calc_space(&c);
    if (k >= 0 && c.s[c.pos]) k = calc_fail(&c, "syntax error: invalid syntax");
    if (k < 0 || calc_eval(&c, k, 1, &r)) snprintf(out, cap, "error: %s", c.err[0] ? c.err : "syntax error: invalid syntax");
    else if (r.is_int) snprintf(out, cap, "%lld", r.i);
    else if (r.f == floor(r.f) && fabs(r.f) < 1e15) snprintf(out, cap, "%lld", (long long)r.f); /* as format_number */
    else snprintf(out, cap, "%.12g", r.f);
}

/* ---------------------------------------------------------------- generation and chat */
enum { MAX_TOOL_CALLS = 4, MAX_TOOL_OUTPUT_TOKENS = 96 }; /* per turn; as lmforge.inference.chat.ChatConfig */
typedef struct {
    float temp, topp;
    int steps, verbose, pos, chat, in_call; /* chat: stop at <|tool_call_end|>, hide special tokens and calls */
    FILE *dump;
    ProbIndex *buf;
    Utf8Out u;
    char call[4096]; /* the text of the tool call being generated (NAME\nARGS), NUL-terminated */
    size_t ncall;
} Gen;
static double prefill_s, decode_s;
static long n_prefill, n_decode;

/* Feed `ids` (prefilled as one batch) after g->pos, then sample up to g->steps tokens, printing them; stops at
   <|end|> or <|bos|>, and in a chat at <|tool_call_end|> (the call's text, after <|tool_call|>, is collected in
   g->call rather than printed). Returns the last sampled token (not yet fed to the model). */
static int generate(const Model *m, State *s, const Tokenizer *t, Gen *g, const int *ids, int n) {
    if (g->pos + n >= m->seq_len) die("the prompt (%d tokens) does not fit the context of %d", g->pos + n, m->seq_len);
    double t0 = now();
    float *logits = forward(m, s, ids, n, g->pos);
    prefill_s += now() - t0;
    n_prefill += n;
    g->pos += n;
    int token = -1;
    t0 = now();
    for (int step = 0; step < g->steps; step++) {
        if (g->dump) fwrite(logits, sizeof(float), m->vocab, g->dump);
        token = sample(logits, m->vocab, g->temp, g->topp, g->buf);
        if (token == t->end || token == t->bos || (g->chat && token == t->call_end)) break;
        if (g->chat && token == t->call) g->in_call = 1, g->ncall = 0;
        Str b = token_str(t, token);
        for (uint32_t i = 0; g->in_call && token != t->call && i < b.len && g->ncall + 1 < sizeof g->call; i++)
            g->call[g->ncall++] = (char)b.s[i];
        emit_token(&g->u, t, token, g->verbose, !g->in_call && !(g->chat && token >= t->n_tokens));
        if (step + 1 == g->steps || g->pos >= m->seq_len) break;
        logits = forward(m, s, &token, 1, g->pos++);
        n_decode++;
    }
    decode_s += now() - t0;
    if (g->u.np) { fwrite("\xef\xbf\xbd", 1, 3, stdout); g->u.np = 0; }
    return token;
}

/* One assistant turn after `ids`, as `lmforge chat` runs it (lmforge/inference/chat.py): each tool call the model
   makes (<|tool_call|>NAME\nARGS<|tool_call_end|>) is shown, run (the calculator; any other tool gets an error),
   and its output fed back as <|tool_output|>OUTPUT<|tool_output_end|>, after which the answer goes on. Returns the
   turn's last sampled token. */
static int chat_turn(const Model *m, State *s, const Tokenizer *t, Gen *g, int *ids, int n) {
    char out[512];
    for (int calls = 1;; calls++) {
        int last = generate(m, s, t, g, ids, n);
        int called = last == t->call_end && g->in_call;
        g->in_call = 0; /* a call cut short by the budget is dropped, as chat.py drops it */
        if (!called) return last; /* the end, the budget, or a stray <|tool_call_end|> */
        g->call[g->ncall] = 0;
        char *name = g->call, *args = strchr(g->call, '\n'), *e = args ? args : g->call + g->ncall;
        if (args) *args++ = 0;
        while (*name && isspace((unsigned char)*name)) name++; /* the name, stripped (chat_format.parse_tool_call) */
        while (e > name && isspace((unsigned char)e[-1])) *--e = 0;
        if (calls > MAX_TOOL_CALLS) snprintf(out, sizeof out, "error: more than %d tool calls in one answer", MAX_TOOL_CALLS);
        else if (!strcmp(name, "calculator")) calculate(args ? args : "", out, sizeof out);
        else snprintf(out, sizeof out, "error: unknown tool '%.64s'; available: calculator", name);
        printf("\n  [%s] %s\n  [%s output] %s\n", name, args ? args : "", name, out);
        n = 0;
        ids[n++] = last;
        ids[n++] = t->output;
        int k = encode(t, out, ids + n);
        if (k > MAX_TOOL_OUTPUT_TOKENS) k = MAX_TOOL_OUTPUT_TOKENS + encode(t, " [cut]", ids + n + MAX_TOOL_OUTPUT_TOKENS);
        n += k;
        ids[n++] = t->output_end;
        if (g->pos + n >= m->seq_len) { fputs("  (the context is full)", stdout); return last; } /* as chat.py */
    }
}

static void usage(FILE *out, int code) {
    fprintf(out, "usage: run model.bin [options]\n"
            "  -i TEXT   prompt (chat mode: the user's message; without it, one message per line of stdin)\n"
            "  -n N      tokens to generate, 1 to 65536 (default 256; generation also stops at the context's end)\n"
            "  -t T      temperature, 0 to 100 (0 = greedy; default 0.8, as lmforge generate; chat 0.7, as lmforge chat)\n"
            "  -p P      top-p, in (0, 1] (1 = off; default 1, as lmforge generate; chat 0.95, as lmforge chat)\n  -s SEED   random seed, 0 to 2^64-1 (default: time)\n"
            "  -m MODE   generate | chat | encode (ids of -i, or of each NUL-separated text on stdin, one line\n"
            "            each) | calc (the chat's calculator on -i, or on each NUL-separated text on stdin)\n"
            "  -y TEXT   system prompt (chat)\n  -d FILE   dump each step's logits (float32, vocab per step)\n"
            "  -v        print each token id and its output bytes to stderr\n");
    exit(code);
}
/* A flag's value within [lo, hi] (an integer if asked), or a one-line error naming the flag. The value itself is not
   echoed: it may hold anything, a newline included. */
static double flag_value(const char *flag, const char *v, double lo, double hi, int integer) {
    char *end;
    double x = strtod(v, &end);
    check(end != v && !*end && finite_f32((float)x) && x >= lo && x <= hi && (!integer || x == floor(x)),
          "%s: expected %s in [%g, %g]", flag, integer ? "an integer" : "a number", lo, hi);
    return x;
}

typedef struct { const char *prompt, *mode, *sys, *dump; unsigned long long seed; } Args;
/* The flags after the parameter file, each checked here: a bad one is a one-line error naming it, exit code 2. */
static void parse_flags(int argc, char **argv, Args *a, Gen *g) {
    for (int i = 2; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int known = f[0] == '-' && f[1] && !f[2] && strchr("inptsmydv", f[1]);
        check(known, "unknown argument %s (run -h for usage)",
              printable((const uint8_t *)f, strlen(f)) ? f : "(unprintable)");
        if (f[1] == 'v') { g->verbose = 1; continue; }
        check(v != NULL, "%s needs a value", f);
        i++;
        switch (f[1]) {
        case 'i': a->prompt = v; break;
        case 'n': g->steps = (int)flag_value("-n", v, 1, FIELDS[7].hi, 1); break; /* at most the largest context */
        case 't': g->temp = (float)flag_value("-t", v, 0, 100, 0); break;
        case 'p': g->topp = (float)flag_value("-p", v, 0, 1, 0);
            check(g->topp > 0, "-p: expected a number in (0, 1]"); break;
        case 's': errno = 0, a->seed = strtoull(v, NULL, 10); /* ERANGE past 2^64-1; digits only, so no sign */
            check(*v && strspn(v, "0123456789") == strlen(v) && !errno, "-s: expected an integer in [0, 2^64-1]");
            break;
        case 'm': a->mode = v;
            check(!strcmp(v, "generate") || !strcmp(v, "chat") || !strcmp(v, "encode") || !strcmp(v, "calc"),
                  "-m: expected generate, chat, encode or calc");
            break;
        case 'y': a->sys = v; break;
        default: a->dump = v;
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 2) usage(stderr, 2);
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) usage(stdout, 0);
    check(argv[1][0] != '-', "the first argument is the parameter file (run -h for usage)");
    Args a = {.mode = "generate", .seed = (unsigned long long)time(NULL)};
    Gen g = {.temp = -1, .topp = -1, .steps = 256}; /* -1: the mode's default */
    parse_flags(argc, argv, &a, &g);
    g.chat = !strcmp(a.mode, "chat");
    if (g.temp < 0) g.temp = g.chat ? 0.7f : 0.8f;
    if (g.topp < 0) g.topp = g.chat ? 0.95f : 1.0f;
    progfile = argv[1];
    rng_state = a.seed ? a.seed : 0x9e3779b97f4a7c15ull;
    Model m = {0};
    Tokenizer t = {0};
    State s;
    load(argv[1], &m, &t);
    init_state(&s, &m);
    check(!a.dump || (g.dump = fopen(a.dump, "wb")) != NULL, "-d: cannot write the file: %s", strerror(errno));
    g.buf = xcalloc(m.vocab, sizeof(ProbIndex));
    char line[4096]; /* a chat message read from stdin; a token holds at least one byte, so ids never outgrow this: */
    int *ids = xcalloc(strlen(a.prompt ? a.prompt : "") + strlen(a.sys ? a.sys : "") + sizeof line + 16, sizeof(int));
    if (!strcmp(a.mode, "generate")) {
        int n = 0;
        if (t.bos >= 0) ids[n++] = t.bos;
        n += encode(&t, a.prompt ? a.prompt : "", ids + n);
        if (n == 0) die("empty prompt and no <|bos|> token to start from");
        fputs(a.prompt ? a.prompt : "", stdout); /* the prompt, then its continuation (as lmforge generate) */
        generate(&m, &s, &t, &g, ids, n);
        putchar('\n');
    } else if (!strcmp(a.mode, "chat")) {
        for (int k = 0, *need[] = {&t.bos, &t.end, &t.system, &t.user, &t.assistant, &t.call, &t.call_end, &t.output,
                                   &t.output_end}; k < 9; k++)
            if (*need[k] < 0) die("the tokenizer has no chat special tokens");
        if (!(m.flags & 4))
            fprintf(stderr, "run: %s: warning: this model was never fine-tuned for chat (a base model): its answers "
                    "continue text rather than reply\n", argv[1]);
        int n = 0, last = -1;
        ids[n++] = t.bos;
        if (a.sys) { ids[n++] = t.system; n += encode(&t, a.sys, ids + n); ids[n++] = t.end; }
        for (int turn = 0;; turn++) {
            const char *msg = a.prompt;
            if (!a.prompt) {
                if (isatty(0)) fputs("User: ", stderr);
                if (!fgets(line, sizeof line, stdin)) break;
                line[strcspn(line, "\r\n")] = 0;
                msg = line;
            } else if (turn > 0) break;
            if (last >= 0 && last != t.end) ids[n++] = last; /* the turn ran out of budget: close it */
            if (last >= 0) ids[n++] = t.end;
            ids[n++] = t.user; n += encode(&t, msg, ids + n); ids[n++] = t.end; ids[n++] = t.assistant;
            if (isatty(0) && !a.prompt) fputs("Assistant: ", stderr);
            last = chat_turn(&m, &s, &t, &g, ids, n);
            putchar('\n');
            fflush(stdout);
            n = 0;
        }
    } else { /* encode: ids (no <|bos|>), or calc: answers, of -i or of each NUL-separated text on stdin */
        size_t n = a.prompt ? strlen(a.prompt) : 0, cap = n + 1;
        char *text = xcalloc(cap + 1, 1);
        if (a.prompt) memcpy(text, a.prompt, n);
        else for (size_t r; (r = fread(text + n, 1, cap - n, stdin)) > 0;)
            if ((n += r) == cap && !(text = realloc(text, (cap *= 2) + 1))) die("out of memory");
        int *out = xcalloc(n + 1, sizeof(int)), calc = !strcmp(a.mode, "calc");
        char answer[512];
        for (size_t at = 0; at <= n; at += strlen(text + at) + 1) {
            text[n] = 0;
            if (calc) { calculate(text + at, answer, sizeof answer); puts(answer); continue; }
            int k = encode(&t, text + at, out);
            for (int i = 0; i < k; i++) printf(i ? " %d" : "%d", out[i]);
            putchar('\n');
        }
        return 0;
    }
    if (g.dump) fclose(g.dump);
    fprintf(stderr, "prefill: %ld tokens, %.1f tok/s; decode: %ld tokens, %.1f tok/s\n", n_prefill,
            prefill_s > 0 ? n_prefill / prefill_s : 0.0, n_decode, decode_s > 0 ? n_decode / decode_s : 0.0);
    return 0;
}
