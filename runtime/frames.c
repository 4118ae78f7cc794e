/* The frame ops of runtime/frames.py as onnxruntime custom ops, one kernel call for a whole frame.
 *
 * In standard ONNX the frame is ~110 nodes, and onnxruntime pays ~0.5 us a node however small
 * the tensors: at batch 1 that alone is three times a small backbone. These kernels compute the
 * same arithmetic, step for step (the closed-form eigensolver, its tie fallback, the sign
 * patterns), once per cloud. runtime/native.py builds this file with the system C compiler and
 * registers it in invc's sessions; the ONNX files stay portable, because each op here is also an
 * ONNX function (the same name and domain) whose body is the standard-op form. onnxruntime runs a
 * registered kernel in place of the function; any other runtime inlines the body.
 *
 * There is no onnxruntime header on PyPI or Debian, so the few parts of its C ABI used here are
 * declared below: OrtApi is a table of function pointers that only ever grows at its end (the
 * indices are fixed since API version 1), and OrtCustomOp's members up to version 16.
 *
 * Ops (domain invc.frames), for T in {32: float, 64: double}:
 *   FrameCentroidMaskedT(pos [B,N,3], mask bool [B,N]) -> [B,1,3]
 *   FrameBasis{O3,SO3}[Canonical][Masked]T(pos [B,N,3], centroid [B,1,3][, mask]) -> [B,F,3,3]
 *   FrameIn{1,4,8}[Centered]T(x [B,...,3], basis [B,F,3,3][, centroid [B,1,3]]) -> [B*F,...,3]
 * tests/test_frames_native.py checks them against the torch forms and the ONNX bodies.
 */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* -- the ABI ----------------------------------------------------------------------------------- */
typedef struct OrtStatus OrtStatus;
typedef void Opaque;
typedef void (*Fn)(void);
typedef struct {
    const Fn *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

enum { ELEM_FLOAT = 1, ELEM_BOOL = 9, ELEM_DOUBLE = 11 };
enum { ORT_INVALID_ARGUMENT = 2 };
enum { API_VERSION = 16 }; /* CreateKernelV2 and KernelComputeV2 (which return a status) */

/* OrtApi slots (0-based) and their signatures */
#define CREATE_STATUS 0
#define CREATE_CUSTOM_OP_DOMAIN 26
#define CUSTOM_OP_DOMAIN_ADD 27
#define ADD_CUSTOM_OP_DOMAIN 28
#define GET_TENSOR_MUTABLE_DATA 51
#define GET_DIMENSIONS_COUNT 61
#define GET_DIMENSIONS 62
#define GET_TENSOR_TYPE_AND_SHAPE 65
#define KERNEL_CONTEXT_GET_INPUT 90
#define KERNEL_CONTEXT_GET_OUTPUT 91
#define RELEASE_TENSOR_TYPE_AND_SHAPE_INFO 99
typedef OrtStatus *(*CreateStatusFn)(int code, const char *msg);
typedef OrtStatus *(*CreateDomainFn)(const char *domain, Opaque **out);
typedef OrtStatus *(*DomainAddFn)(Opaque *domain, const void *op);
typedef OrtStatus *(*AddDomainFn)(Opaque *options, Opaque *domain);
typedef OrtStatus *(*MutableDataFn)(Opaque *value, void **out);
typedef OrtStatus *(*DimsCountFn)(const Opaque *info, size_t *out);
typedef OrtStatus *(*DimsFn)(const Opaque *info, int64_t *dims, size_t count);
typedef OrtStatus *(*TypeAndShapeFn)(const Opaque *value, Opaque **out);
typedef OrtStatus *(*GetInputFn)(const Opaque *context, size_t index, const Opaque **out);
typedef OrtStatus *(*GetOutputFn)(Opaque *context, size_t index, const int64_t *dims, size_t count, Opaque **out);
typedef void (*ReleaseInfoFn)(Opaque *info);
#define API(slot, type) ((type)api[slot])

typedef struct OrtCustomOp {
    uint32_t version;
    void *(*CreateKernel)(const struct OrtCustomOp *, const Fn *, const Opaque *);
    const char *(*GetName)(const struct OrtCustomOp *);
    const char *(*GetExecutionProviderType)(const struct OrtCustomOp *);
    int (*GetInputType)(const struct OrtCustomOp *, size_t);
    size_t (*GetInputTypeCount)(const struct OrtCustomOp *);
    int (*GetOutputType)(const struct OrtCustomOp *, size_t);
    size_t (*GetOutputTypeCount)(const struct OrtCustomOp *);
    void (*KernelCompute)(void *, Opaque *);
    void (*KernelDestroy)(void *);
    int (*GetInputCharacteristic)(const struct OrtCustomOp *, size_t);
    int (*GetOutputCharacteristic)(const struct OrtCustomOp *, size_t);
    int (*GetInputMemoryType)(const struct OrtCustomOp *, size_t);
    int (*GetVariadicInputMinArity)(const struct OrtCustomOp *);
    int (*GetVariadicInputHomogeneity)(const struct OrtCustomOp *);
    int (*GetVariadicOutputMinArity)(const struct OrtCustomOp *);
    int (*GetVariadicOutputHomogeneity)(const struct OrtCustomOp *);
    OrtStatus *(*CreateKernelV2)(const struct OrtCustomOp *, const Fn *, const Opaque *, void **);
    OrtStatus *(*KernelComputeV2)(void *, Opaque *);
} OrtCustomOp;

/* -- the arithmetic of runtime/frames.py --------------------------------------------------------- */
#define TOL_GAP 1e-6 /* GAP_TOL */
#define SPREAD_ULPS 64.0 /* SPREAD_ULPS */

/* torch.maximum / minimum: NaN in, NaN out (C's fmax would drop it). */
static double mx(double a, double b) { return (isnan(a) || isnan(b)) ? NAN : (a > b ? a : b); }
static double mn(double a, double b) { return (isnan(a) || isnan(b)) ? NAN : (a < b ? a : b); }

typedef struct {
    const void *pos, *centroid; /* one cloud: [N, 3] and [3] */
    const uint8_t *mask;        /* [N] or NULL */
    int64_t n;
    int f64;
} Cloud;

static double element(const void *p, int64_t i, int f64) {
    return f64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}

/* (x - c) of point i, subtracted in the input's precision as the graph does, then widened. */
static void centered(const Cloud *c, int64_t i, double d[3]) {
    if (c->f64) {
        const double *p = (const double *)c->pos + 3 * i, *m = c->centroid;
        d[0] = p[0] - m[0], d[1] = p[1] - m[1], d[2] = p[2] - m[2];
    } else {
        const float *p = (const float *)c->pos + 3 * i, *m = c->centroid;
        d[0] = (double)(p[0] - m[0]), d[1] = (double)(p[1] - m[1]), d[2] = (double)(p[2] - m[2]);
    }
}

/* Whether point i counts: a cloud whose mask keeps no point is built from all its points. */
static int any_real(const Cloud *c) {
    if (!c->mask)
        return 0;
    for (int64_t i = 0; i < c->n; i++)
        if (c->mask[i])
            return 1;
    return 0;
}

static int real(const Cloud *c, int any, int64_t i) { return !c->mask || !any || c->mask[i]; }

static void unit(double v[3]) {
    double s = mx(sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]), 1e-300);
    for (int k = 0; k < 3; k++)
        v[k] /= s;
}

/* Index of the first largest (or smallest) of n entries, as argmax / argmin. */
static int first_extreme(const double *x, int n, int largest) {
    int best = 0;
    for (int k = 1; k < n; k++)
        if (largest ? x[k] > x[best] : x[k] < x[best])
            best = k;
    return best;
}

/* Eigenvalues λ1 >= λ2 >= λ3 of symmetric traceless b: see eigenvalues() in runtime/frames.py. */
static void eigenvalues(const double b[3][3], double lam[3]) {
    double square = 0, cube = 0;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            double bb = b[i][0] * b[0][j] + b[i][1] * b[1][j] + b[i][2] * b[2][j];
            square += b[i][j] * b[i][j];
            cube += bb * b[i][j];
        }
    double root = sqrt(square);
    double r = cube * sqrt(6.0) / mx(square * root, 1e-90);
    int flip = 0.0 > r;
    r = mn(fabs(r), 1.0);
    double t = (double)cosf(acosf((float)r) / 3.0f);
    double t2 = t * t;
    t = t - (t * (t2 * 4.0 - 3.0) - r) / (t2 * 12.0 - 3.0);
    double sine = sqrt(mx(1.0 - t * t, 0.0));
    double scale = root * sqrt(2.0 / 3.0), h = sqrt(3.0) / 2;
    double r0[3] = {1.0, -0.5, -0.5}, r1[3] = {0.0, h, -h};
    double f0[3] = {0.5, 0.5, -1.0}, f1[3] = {h, -h, 0.0};
    for (int k = 0; k < 3; k++)
        lam[k] = t * scale * (flip ? f0 : r0)[k] + sine * scale * (flip ? f1 : r1)[k];
}

/* Unit eigenvector of b for a simple eigenvalue e: the largest-diagonal column of adj(b - eI). */
static void eigenvector(const double b[3][3], double e, double v[3]) {
    double a[3][3], adj[3][3];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            a[i][j] = b[i][j] - (i == j ? e : 0.0);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            int r1 = (i + 1) % 3, r2 = (i + 2) % 3, c1 = (j + 1) % 3, c2 = (j + 2) % 3;
            adj[i][j] = a[r1][c1] * a[r2][c2] - a[r1][c2] * a[r2][c1];
        }
    double diag[3] = {adj[0][0], adj[1][1], adj[2][2]};
    int k = first_extreme(diag, 3, 1);
    for (int i = 0; i < 3; i++)
        v[i] = adj[i][k];
    unit(v);
}

/* Right-handed principal axes (columns of axes, by decreasing eigenvalue): principal_axes(). */
static void principal_axes(const Cloud *c, double axes[3][3]) {
    int any = any_real(c);
    double xx = 0, xy = 0, xz = 0, yy = 0, yz = 0, zz = 0, d[3]; /* in registers: the hot loop */
    double size = 0; /* Σ |x|², for rounding_floor */
    for (int64_t i = 0; i < c->n; i++) {
        if (!real(c, any, i))
            continue; /* padding, NaN included, must not count */
        centered(c, i, d);
        xx += d[0] * d[0], xy += d[0] * d[1], xz += d[0] * d[2];
        yy += d[1] * d[1], yz += d[1] * d[2], zz += d[2] * d[2];
        for (int k = 0; k < 3; k++) {
            double x = element(c->pos, 3 * i + k, c->f64);
            size += x * x;
        }
    }
    double ulps = SPREAD_ULPS * (c->f64 ? DBL_EPSILON : FLT_EPSILON);
    double cov[3][3] = {{xx, xy, xz}, {xy, yy, yz}, {xz, yz, zz}};
    double trace = cov[0][0] + cov[1][1] + cov[2][2], scale = mx(trace, 1e-300), b[3][3];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            b[i][j] = cov[i][j] / scale - (i == j ? trace / scale * (1.0 / 3.0) : 0.0);
    double lam[3], ends[2][3];
    eigenvalues(b, lam);
    double gaps[2] = {lam[0] - lam[1], lam[1] - lam[2]};
    if (size * (ulps * ulps) >= trace) /* a cloud collapsed to rounding is one point (a NaN trace is not) */
        gaps[0] = gaps[1] = 0.0;
    int swap = first_extreme(gaps, 2, 1) == 1; /* the better separated end goes first */
    eigenvector(b, lam[0], ends[swap]);
    eigenvector(b, lam[2], ends[!swap]);
    int clear = mx(gaps[0], gaps[1]) > TOL_GAP, both = mn(gaps[0], gaps[1]) > TOL_GAP;
    double u[3] = {1.0, 0.0, 0.0}, w[3] = {0.0, 0.0, 0.0};
    if (clear)
        memcpy(u, ends[0], sizeof u);
    if (both) {
        memcpy(w, ends[1], sizeof w);
    } else { /* the least aligned coordinate axis stands in for a tied pair's eigenvector */
        double au[3] = {fabs(u[0]), fabs(u[1]), fabs(u[2])};
        w[first_extreme(au, 3, 0)] = 1.0;
    }
    double dot = w[0] * u[0] + w[1] * u[1] + w[2] * u[2];
    for (int k = 0; k < 3; k++)
        w[k] -= dot * u[k];
    unit(w);
    const double *first = swap ? w : u, *last = swap ? u : w;
    double mid[3] = {last[1] * first[2] - last[2] * first[1], last[2] * first[0] - last[0] * first[2],
                     last[0] * first[1] - last[1] * first[0]};
    for (int i = 0; i < 3; i++) {
        axes[i][0] = first[i];
        axes[i][1] = mid[i];
        axes[i][2] = last[i];
    }
}

/* ±1 per axis making the third moment along it >= 0, a moment within float64 rounding of the
   cloud's scale counting as 0: _third_moment_signs(). */
static void third_moment_signs(const Cloud *c, const double axes[3][3], int proper, double s[3]) {
    int any = any_real(c);
    double m3[3] = {0, 0, 0}, square = 0;
    for (int64_t i = 0; i < c->n; i++) {
        if (!real(c, any, i))
            continue;
        double d[3];
        centered(c, i, d);
        for (int j = 0; j < 3; j++) {
            double y = d[0] * axes[0][j] + d[1] * axes[1][j] + d[2] * axes[2][j];
            m3[j] += y * y * y;
            square += y * y;
        }
    }
    double margin = square * sqrt(square) * (SPREAD_ULPS * DBL_EPSILON);
    for (int j = 0; j < 3; j++)
        s[j] = m3[j] + margin >= 0.0 ? 1.0 : -1.0;
    if (proper)
        s[2] = s[0] * s[1];
}

static int frame_count(int proper, int canonical) { return canonical ? 1 : (proper ? 4 : 8); }

/* The sign patterns of itertools.product((1, -1), repeat=3), det +1 only when proper. */
static int sign_patterns(int proper, double s[8][3]) {
    int count = 0;
    for (int f = 0; f < 8; f++) {
        double p[3] = {f & 4 ? -1.0 : 1.0, f & 2 ? -1.0 : 1.0, f & 1 ? -1.0 : 1.0};
        if (!proper || p[0] * p[1] * p[2] > 0)
            memcpy(s[count++], p, sizeof p);
    }
    return count;
}

static void cloud_frames(const Cloud *c, int proper, int canonical, void *out) {
    double axes[3][3], s[8][3];
    principal_axes(c, axes);
    int frames = canonical ? 1 : sign_patterns(proper, s);
    if (canonical)
        third_moment_signs(c, axes, proper, s[0]);
    for (int f = 0; f < frames; f++)
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) {
                double v = axes[i][j] * s[f][j];
                if (c->f64)
                    ((double *)out)[9 * f + 3 * i + j] = v;
                else
                    ((float *)out)[9 * f + 3 * i + j] = (float)v;
            }
}

static void cloud_centroid(const Cloud *c, void *out) {
    int any = any_real(c);
    double total[3] = {0, 0, 0}, count = 0;
    for (int64_t i = 0; i < c->n; i++) {
        if (!real(c, any, i))
            continue;
        for (int k = 0; k < 3; k++)
            total[k] += element(c->pos, 3 * i + k, c->f64);
        count += 1;
    }
    for (int k = 0; k < 3; k++) {
        double v = total[k] / mx(count, 1.0);
        if (c->f64)
            ((double *)out)[k] = v;
        else
            ((float *)out)[k] = (float)v;
    }
}

/* Points in every frame, into_frames(): (x - c) @ frame 0 in the input's precision, then each
 * frame's sign pattern on the columns. x is [m, 3] of one cloud, out [frames, m, 3]. */
static void cloud_in_frames(const void *x, const void *centroid, const void *basis, int64_t m, int frames,
                            int f64, void *out) {
    double s[8][3] = {{1.0, 1.0, 1.0}};
    if (frames > 1)
        sign_patterns(frames == 4, s);
    for (int64_t i = 0; i < m; i++) {
        double y[3];
        if (f64) {
            const double *p = (const double *)x + 3 * i, *c = centroid, *f = basis;
            double d[3] = {p[0] - (c ? c[0] : 0.0), p[1] - (c ? c[1] : 0.0), p[2] - (c ? c[2] : 0.0)};
            for (int j = 0; j < 3; j++)
                y[j] = d[0] * f[j] + d[1] * f[3 + j] + d[2] * f[6 + j];
        } else {
            const float *p = (const float *)x + 3 * i, *c = centroid, *f = basis;
            float d[3] = {p[0] - (c ? c[0] : 0.0f), p[1] - (c ? c[1] : 0.0f), p[2] - (c ? c[2] : 0.0f)};
            for (int j = 0; j < 3; j++)
                y[j] = d[0] * f[j] + d[1] * f[3 + j] + d[2] * f[6 + j];
        }
        for (int k = 0; k < frames; k++)
            for (int j = 0; j < 3; j++) {
                int64_t at = (k * m + i) * 3 + j;
                if (f64)
                    ((double *)out)[at] = y[j] * s[k][j];
                else
                    ((float *)out)[at] = (float)y[j] * (float)s[k][j];
            }
    }
}

/* -- the ops ------------------------------------------------------------------------------------- */
enum Kind { CENTROID, BASIS, IN };

typedef struct {
    OrtCustomOp base; /* first, so an OrtCustomOp* is a Config* */
    char name[40];
    enum Kind kind;
    int f64, masked, proper, canonical, frames, centered;
} Config;

typedef struct {
    const Config *config;
    const Fn *api;
} Kernel;

static const char *op_name(const OrtCustomOp *op) { return ((const Config *)op)->name; }
static const char *op_provider(const OrtCustomOp *op) { (void)op; return NULL; /* the CPU */ }
static size_t op_inputs(const OrtCustomOp *op) {
    const Config *c = (const Config *)op;
    return c->kind == CENTROID ? 2 : c->kind == BASIS ? 2 + c->masked : 2 + c->centered;
}
static int op_input_type(const OrtCustomOp *op, size_t i) {
    const Config *c = (const Config *)op;
    return c->masked && i == op_inputs(op) - 1 ? ELEM_BOOL : (c->f64 ? ELEM_DOUBLE : ELEM_FLOAT);
}
static size_t op_outputs(const OrtCustomOp *op) { (void)op; return 1; }
static int op_output_type(const OrtCustomOp *op, size_t i) {
    (void)i;
    return ((const Config *)op)->f64 ? ELEM_DOUBLE : ELEM_FLOAT;
}
static int op_required(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return 0; }
static int op_memory(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return 0; }

static OrtStatus *fail(const Fn *api, const Config *c, const char *what) {
    char message[160];
    snprintf(message, sizeof message, "invc.frames %s: %s", c->name, what);
    return API(CREATE_STATUS, CreateStatusFn)(ORT_INVALID_ARGUMENT, message);
}

#define TRY(call)                    \
    do {                             \
        OrtStatus *status_ = (call); \
        if (status_)                 \
            return status_;          \
    } while (0)

static OrtStatus *create_kernel(const OrtCustomOp *op, const Fn *api, const Opaque *info, void **out) {
    (void)info;
    Kernel *k = malloc(sizeof *k);
    if (!k)
        return fail(api, (const Config *)op, "out of memory");
    k->config = (const Config *)op;
    k->api = api;
    *out = k;
    return NULL;
}

static void destroy_kernel(void *kernel) { free(kernel); }

enum { MAX_RANK = 8 };

static OrtStatus *shape_of(const Fn *api, const Opaque *value, int64_t dims[MAX_RANK], size_t *rank) {
    Opaque *info;
    TRY(API(GET_TENSOR_TYPE_AND_SHAPE, TypeAndShapeFn)(value, &info));
    OrtStatus *status = API(GET_DIMENSIONS_COUNT, DimsCountFn)(info, rank);
    if (!status && *rank <= MAX_RANK)
        status = API(GET_DIMENSIONS, DimsFn)(info, dims, *rank);
    API(RELEASE_TENSOR_TYPE_AND_SHAPE_INFO, ReleaseInfoFn)(info);
    return status;
}

static int is_shape(const int64_t *dims, size_t rank, size_t want, int64_t d0, int64_t d1, int64_t d2) {
    int64_t w[3] = {d0, d1, d2};
    if (rank != want)
        return 0;
    for (size_t k = 0; k < rank && k < 3; k++)
        if (w[k] >= 0 && dims[k] != w[k])
            return 0;
    return 1;
}

static OrtStatus *compute(void *kernel, Opaque *context) {
    const Kernel *k = kernel;
    const Config *c = k->config;
    const Fn *api = k->api;
    size_t count = op_inputs(&c->base), rank[3];
    const Opaque *in[3];
    int64_t dims[3][MAX_RANK];
    char *data[3];
    for (size_t i = 0; i < count; i++) {
        TRY(API(KERNEL_CONTEXT_GET_INPUT, GetInputFn)(context, i, &in[i]));
        TRY(shape_of(api, in[i], dims[i], &rank[i]));
        if (rank[i] > MAX_RANK || rank[i] < 2 || (i == 0 && dims[0][rank[0] - 1] != 3))
            return fail(api, c, "the first input must be [B, ..., 3]");
        TRY(API(GET_TENSOR_MUTABLE_DATA, MutableDataFn)((Opaque *)in[i], (void **)&data[i]));
    }
    int64_t b = dims[0][0], n = 1, out_dims[MAX_RANK];
    size_t out_rank = rank[0];
    for (size_t k = 1; k + 1 < rank[0]; k++)
        n *= dims[0][k]; /* points (or rows of 3) per cloud */
    size_t width = c->f64 ? sizeof(double) : sizeof(float);
    int frames = c->kind == BASIS ? frame_count(c->proper, c->canonical) : c->frames;
    if (c->kind != IN && rank[0] != 3)
        return fail(api, c, "positions must be [B, N, 3]");
    if (c->kind == BASIS && !is_shape(dims[1], rank[1], 3, b, 1, 3))
        return fail(api, c, "the centroid must be [B, 1, 3], B as in the positions");
    if (c->masked && !is_shape(dims[count - 1], rank[count - 1], 2, b, n, -1))
        return fail(api, c, "the mask must be [B, N], as the positions");
    if (c->kind == IN && !(rank[1] == 4 && dims[1][0] == b && dims[1][1] == frames && dims[1][2] == 3 && dims[1][3] == 3))
        return fail(api, c, "the basis must be [B, F, 3, 3] with F frames as the op's name says");
    if (c->kind == IN && c->centered && !is_shape(dims[2], rank[2], 3, b, 1, 3))
        return fail(api, c, "the centroid must be [B, 1, 3], B as in the points");
    if (c->kind == CENTROID) {
        int64_t shape[3] = {b, 1, 3};
        memcpy(out_dims, shape, sizeof shape);
    } else if (c->kind == BASIS) {
        int64_t shape[4] = {b, frames, 3, 3};
        memcpy(out_dims, shape, sizeof shape), out_rank = 4;
    } else {
        memcpy(out_dims, dims[0], rank[0] * sizeof(int64_t));
        out_dims[0] = b * frames;
    }
    Opaque *out;
    char *result;
    TRY(API(KERNEL_CONTEXT_GET_OUTPUT, GetOutputFn)(context, 0, out_dims, out_rank, &out));
    TRY(API(GET_TENSOR_MUTABLE_DATA, MutableDataFn)(out, (void **)&result));
    for (int64_t i = 0; i < b; i++) {
        const char *x = data[0] + i * n * 3 * width;
        if (c->kind == IN) {
            const char *centroid = c->centered ? data[2] + i * 3 * width : NULL;
            cloud_in_frames(x, centroid, data[1] + i * frames * 9 * width, n, frames, c->f64,
                            result + i * frames * n * 3 * width);
            continue;
        }
        Cloud cloud = {x, c->kind == BASIS ? data[1] + i * 3 * width : NULL,
                       c->masked ? (const uint8_t *)data[count - 1] + i * n : NULL, n, c->f64};
        if (c->kind == BASIS)
            cloud_frames(&cloud, c->proper, c->canonical, result + i * frames * 9 * width);
        else
            cloud_centroid(&cloud, result + i * 3 * width);
    }
    return NULL;
}

/* -- registration -------------------------------------------------------------------------------- */
enum { CONFIGS = 2 + 16 + 12 };
static Config configs[CONFIGS];
static pthread_once_t configured = PTHREAD_ONCE_INIT;

static Config *add(int *count, enum Kind kind, int f64) {
    Config *c = &configs[(*count)++];
    memset(c, 0, sizeof *c);
    c->kind = kind, c->f64 = f64;
    c->base = (OrtCustomOp){.version = API_VERSION, .GetName = op_name, .GetExecutionProviderType = op_provider,
                            .GetInputType = op_input_type, .GetInputTypeCount = op_inputs,
                            .GetOutputType = op_output_type, .GetOutputTypeCount = op_outputs,
                            .KernelDestroy = destroy_kernel, .GetInputCharacteristic = op_required,
                            .GetOutputCharacteristic = op_required, .GetInputMemoryType = op_memory,
                            .CreateKernelV2 = create_kernel, .KernelComputeV2 = compute};
    return c;
}

/* The names runtime/native.py's op_name() spells. */
static void configure(void) {
    int count = 0, widths[2] = {32, 64}, sizes[3] = {1, 4, 8};
    for (int f64 = 0; f64 < 2; f64++) {
        Config *c = add(&count, CENTROID, f64);
        c->masked = 1;
        snprintf(c->name, sizeof c->name, "FrameCentroidMasked%d", widths[f64]);
        for (int masked = 0; masked < 2; masked++)
            for (int proper = 0; proper < 2; proper++)
                for (int canonical = 0; canonical < 2; canonical++) {
                    c = add(&count, BASIS, f64);
                    c->masked = masked, c->proper = proper, c->canonical = canonical;
                    snprintf(c->name, sizeof c->name, "FrameBasis%s%s%s%d", proper ? "SO3" : "O3",
                             canonical ? "Canonical" : "", masked ? "Masked" : "", widths[f64]);
                }
        for (int size = 0; size < 3; size++)
            for (int centered = 0; centered < 2; centered++) {
                c = add(&count, IN, f64);
                c->frames = sizes[size], c->centered = centered;
                snprintf(c->name, sizeof c->name, "FrameIn%d%s%d", sizes[size], centered ? "Centered" : "",
                         widths[f64]);
            }
    }
}

/* Called by onnxruntime's register_custom_ops_library. The domain is never released: onnxruntime
 * needs it as long as any session made with these options lives. */
OrtStatus *RegisterCustomOps(Opaque *options, const OrtApiBase *base) {
    const Fn *api = base->GetApi(API_VERSION);
    if (!api) /* an onnxruntime older than 1.16: nothing is registered, the ONNX functions run */
        return NULL;
    pthread_once(&configured, configure);
    Opaque *domain;
    TRY(API(CREATE_CUSTOM_OP_DOMAIN, CreateDomainFn)("invc.frames", &domain));
    for (int i = 0; i < CONFIGS; i++)
        TRY(API(CUSTOM_OP_DOMAIN_ADD, DomainAddFn)(domain, &configs[i].base));
    return API(ADD_CUSTOM_OP_DOMAIN, AddDomainFn)(options, domain);
}
