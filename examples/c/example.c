/*
 * qgemm from C: pack weights once, run a GEMM with i32 output and one with u8 output
 * (bias, then Float requantization), the u8 one again on 3 of qgemm's threads and cut
 * into tasks run by two pthreads (as an engine's own pool would), then saved to bytes,
 * loaded and run as a linear-layer operator, and a padded 3x3
 * convolution, and check each against known answers from the Rust reference
 * (known_answers.h). Then show what a misuse returns.
 *
 * Build (see the README, "Using qgemm from C"):
 *   cargo rustc -p qgemm --release --lib --crate-type staticlib
 *   cc -std=c11 -Iinclude examples/c/example.c target/release/libqgemm.a \
 *      -lpthread -ldl -lm -o gemm-example
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qgemm.h"
#include "known_answers.h"

enum { M = 5, K = 37, N = 11 };

static int failed(const char *what, qgemm_status status) {
    char message[256];
    qgemm_last_error_message(message, sizeof message);
    fprintf(stderr, "%s: status %u: %s\n", what, (unsigned)status, message);
    return 1;
}

/* One thread of an engine's pool: every other task, in a workspace of its own. */
struct worker {
    const qgemm_tasks *tasks;
    size_t first, count;
    qgemm_status status;
};

static void *run_tasks(void *arg) {
    struct worker *w = arg;
    qgemm_workspace *workspace = NULL;
    w->status = qgemm_workspace_new(&workspace);
    for (size_t i = w->first; i < w->count && w->status == QGEMM_OK; i += 2) {
        w->status = qgemm_tasks_run(w->tasks, i, workspace);
    }
    qgemm_workspace_free(workspace);
    return NULL;
}

/* The u8 GEMM on 3 of qgemm's threads, then cut into a 2 x 2 grid of tasks (rows 0..2,
 * 2..5 by columns 0..4, 4..11) that two pthreads run: the same bytes either way. */
static int threads(const qgemm_activations *act, const qgemm_packed_weights *packed,
                   const qgemm_output_stage *stage) {
    uint8_t c8[M * N];
    qgemm_output out = {
        .type = QGEMM_OUTPUT_U8, .data = c8, .data_len = M * N, .rows = M, .cols = N, .row_stride = N,
    };
    qgemm_status status = qgemm_gemm_threaded(act, packed, stage, &out, 3, NULL);
    if (status != QGEMM_OK) return failed("qgemm_gemm_threaded", status);
    if (memcmp(c8, expected_u8, sizeof c8) != 0) {
        fprintf(stderr, "u8 output on 3 threads differs from the reference\n");
        return 1;
    }

    memset(c8, 0, sizeof c8);
    const size_t rows[] = { 0, 2, M }, cols[] = { 0, 4, N };
    qgemm_partition grid = { .row_bounds = rows, .row_bounds_len = 3, .col_bounds = cols, .col_bounds_len = 3 };
    qgemm_tasks *tasks = NULL;
    status = qgemm_gemm_tasks_new(act, packed, stage, &out, &grid, &tasks);
    if (status != QGEMM_OK) return failed("qgemm_gemm_tasks_new", status);
    size_t count = 0;
    qgemm_tasks_count(tasks, &count);
    struct worker workers[2] = { { tasks, 0, count, QGEMM_OK }, { tasks, 1, count, QGEMM_OK } };
    pthread_t thread;
    int started = pthread_create(&thread, NULL, run_tasks, &workers[1]) == 0;
    run_tasks(&workers[0]);
    if (started) {
        pthread_join(thread, NULL);
    } else {
        run_tasks(&workers[1]); /* no second thread: this one runs its share too */
    }
    qgemm_tasks_free(tasks);
    for (int t = 0; t < 2; t++) {
        if (workers[t].status != QGEMM_OK) return failed("qgemm_tasks_run", workers[t].status);
    }
    if (memcmp(c8, expected_u8, sizeof c8) != 0) {
        fprintf(stderr, "u8 output from tasks differs from the reference\n");
        return 1;
    }
    printf("threads: u8 output on 3 threads and from %zu tasks on 2 pthreads equals the reference's\n", count);
    return 0;
}

/* A 3x3 convolution, padding 1, on a 1x6x5x4 NHWC input with 6 output channels. */
static int conv(void) {
    enum { H = 6, W = 5, C = 4, OC = 6, KH = 3, KW = 3 };
    uint8_t input[H * W * C];
    int8_t filter[OC * KH * KW * C]; /* OHWI */
    int32_t bias[OC];
    for (size_t i = 0; i < H * W * C; i++) input[i] = (uint8_t)(i * 29 + 5);
    for (size_t i = 0; i < OC * KH * KW * C; i++) filter[i] = (int8_t)(uint8_t)(i * 71 + 3);
    for (int j = 0; j < OC; j++) bias[j] = 300 * j - 700;
    const int8_t w_zero_point = 1;

    qgemm_conv_weights weights = {
        .data = filter, .data_len = OC * KH * KW * C, .layout = QGEMM_FILTER_OHWI,
        .out_channels = OC, .kernel_height = KH, .kernel_width = KW, .in_channels = C, .groups = 1,
        .zero_points = &w_zero_point, .zero_points_len = 1,
    };
    qgemm_packed_conv_weights *packed = NULL;
    qgemm_status status = qgemm_packed_conv_weights_new(&weights, &packed);
    if (status != QGEMM_OK) return failed("qgemm_packed_conv_weights_new", status);

    qgemm_conv2d_params params = {
        .batch = 1, .in_height = H, .in_width = W, .in_channels = C, .out_channels = OC,
        .kernel_height = KH, .kernel_width = KW, .stride_height = 1, .stride_width = 1,
        .dilation_height = 1, .dilation_width = 1,
        .pad_top = 1, .pad_left = 1, .pad_bottom = 1, .pad_right = 1, .groups = 1,
    };
    qgemm_conv_input x = { .data = input, .data_len = H * W * C, .zero_point = 100 };
    const float scale = 1.0f / 256.0f;
    qgemm_output_stage stage = {
        .bias = bias, .bias_len = OC, .scheme = QGEMM_SCHEME_FLOAT, .scales = &scale, .params_len = 1,
        .zero_point = 128, .min = 0, .max = 255,
    };
    /* The output, NHWC [1][6][5][6], seen as a (N*OH*OW) x OC matrix. */
    uint8_t y[H * W * OC];
    qgemm_output out = {
        .type = QGEMM_OUTPUT_U8, .data = y, .data_len = H * W * OC, .rows = H * W, .cols = OC, .row_stride = OC,
    };
    status = qgemm_conv2d(&x, packed, &params, &stage, &out);
    qgemm_packed_conv_weights_free(packed);
    if (status != QGEMM_OK) return failed("qgemm_conv2d", status);
    if (memcmp(y, expected_conv_u8, sizeof y) != 0) {
        fprintf(stderr, "conv output differs from the reference\n");
        return 1;
    }
    printf("conv: u8 output equals the reference's (1x%dx%dx%d, %d channels out, 3x3, pad 1)\n", H, W, C, OC);
    return 0;
}

/* The weights saved to bytes and loaded back (as a model file would carry them), then
 * the u8 GEMM as a linear-layer operator made once from the loaded weights; a flipped
 * byte in the saved weights is refused. */
static int saved_weights_and_operator(const qgemm_packed_weights *packed, const uint8_t *a,
                                      const qgemm_output_stage *stage) {
    size_t len = 0;
    qgemm_status status = qgemm_packed_weights_save(packed, NULL, 0, &len);
    if (status != QGEMM_OK) return failed("qgemm_packed_weights_save (size)", status);
    uint8_t *bytes = malloc(len);
    if (bytes == NULL) return 1;
    status = qgemm_packed_weights_save(packed, bytes, len, &len);
    if (status != QGEMM_OK) return failed("qgemm_packed_weights_save", status);
    qgemm_packed_weights *loaded = NULL;
    status = qgemm_packed_weights_load(bytes, len, &loaded);
    if (status != QGEMM_OK) return failed("qgemm_packed_weights_load", status);

    qgemm_linear *linear = NULL;
    status = qgemm_linear_new(loaded, 3, false, stage, QGEMM_OUTPUT_U8, 2, &linear);
    qgemm_packed_weights_free(loaded); /* the operator holds its own copy */
    if (status != QGEMM_OK) return failed("qgemm_linear_new", status);
    uint8_t c8[M * N];
    qgemm_output out = {
        .type = QGEMM_OUTPUT_U8, .data = c8, .data_len = M * N, .rows = M, .cols = N, .row_stride = N,
    };
    status = qgemm_linear_run(linear, a, M * K, M, &out, NULL);
    qgemm_linear_free(linear);
    if (status != QGEMM_OK) return failed("qgemm_linear_run", status);
    if (memcmp(c8, expected_u8, sizeof c8) != 0) {
        fprintf(stderr, "u8 output of the linear operator on loaded weights differs from the reference\n");
        return 1;
    }

    bytes[len / 2] ^= 0x10;
    qgemm_packed_weights *corrupt = NULL;
    status = qgemm_packed_weights_load(bytes, len, &corrupt);
    free(bytes);
    char message[256];
    qgemm_last_error_message(message, sizeof message);
    if (status != QGEMM_STATUS_FORMAT || corrupt != NULL) {
        fprintf(stderr, "corrupted weights returned status %u\n", (unsigned)status);
        return 1;
    }
    printf("saved weights: %zu bytes, loaded, run as a linear operator: u8 output equals the reference's\n", len);
    printf("a flipped byte: status %u (QGEMM_STATUS_FORMAT): %s\n", (unsigned)status, message);
    return 0;
}

int main(void) {
    /* The inputs, from the formulas dispatch/tests/c_example_answers.rs uses. */
    uint8_t a[M * K];
    int8_t b[N * K]; /* N x K, the PyTorch/ONNX linear-weight layout */
    int32_t bias[N];
    for (size_t i = 0; i < M * K; i++) a[i] = (uint8_t)(i * 37 + 11);
    for (size_t i = 0; i < N * K; i++) b[i] = (int8_t)(uint8_t)(i * 53 + 7);
    for (int j = 0; j < N; j++) bias[j] = j * 1000 - 5000;
    const int8_t b_zero_point = -2;

    qgemm_isa isa = qgemm_detected_isa();
    printf("qgemm %s, detected ISA %u\n", qgemm_version(), (unsigned)isa);

    qgemm_weights weights = {
        .data = b, .data_len = N * K, .layout = QGEMM_LAYOUT_N_BY_K, .k = K, .n = N,
        .zero_points = &b_zero_point, .zero_points_len = 1,
    };
    qgemm_packed_weights *packed = NULL;
    qgemm_status status = qgemm_packed_weights_new(&weights, &packed);
    if (status != QGEMM_OK) return failed("qgemm_packed_weights_new", status);

    qgemm_activations act = {
        .data = a, .data_len = M * K, .rows = M, .cols = K, .row_stride = K, .zero_point = 3,
    };

    /* i32 output: no requantization. */
    int32_t c32[M * N];
    qgemm_output_stage raw = { .bias = bias, .bias_len = N, .scheme = QGEMM_SCHEME_NONE };
    qgemm_output out32 = {
        .type = QGEMM_OUTPUT_I32, .data = c32, .data_len = M * N, .rows = M, .cols = N, .row_stride = N,
    };
    status = qgemm_gemm(&act, packed, &raw, &out32);
    if (status != QGEMM_OK) return failed("qgemm_gemm (i32)", status);
    if (memcmp(c32, expected_i32, sizeof c32) != 0) {
        fprintf(stderr, "i32 output differs from the reference\n");
        return 1;
    }

    /* u8 output: bias, then x 1/1024 rounded half to even, + 128, clamped. */
    uint8_t c8[M * N];
    const float scale = 1.0f / 1024.0f;
    qgemm_output_stage requantize = {
        .bias = bias, .bias_len = N, .scheme = QGEMM_SCHEME_FLOAT, .scales = &scale, .params_len = 1,
        .zero_point = 128, .min = 0, .max = 255,
    };
    qgemm_output out8 = {
        .type = QGEMM_OUTPUT_U8, .data = c8, .data_len = M * N, .rows = M, .cols = N, .row_stride = N,
    };
    status = qgemm_gemm(&act, packed, &requantize, &out8);
    if (status != QGEMM_OK) return failed("qgemm_gemm (u8)", status);
    if (memcmp(c8, expected_u8, sizeof c8) != 0) {
        fprintf(stderr, "u8 output differs from the reference\n");
        return 1;
    }

    if (threads(&act, packed, &requantize) != 0) return 1;
    if (saved_weights_and_operator(packed, a, &requantize) != 0) return 1;

    /* A misuse: the output buffer one element short. Nothing is written. */
    out8.data_len = M * N - 1;
    status = qgemm_gemm(&act, packed, &requantize, &out8);
    char message[256];
    qgemm_last_error_message(message, sizeof message);
    if (status != QGEMM_STATUS_BUFFER_LENGTH) {
        fprintf(stderr, "a short buffer returned status %u\n", (unsigned)status);
        return 1;
    }
    printf("a short output buffer: status %u (QGEMM_STATUS_BUFFER_LENGTH): %s\n", (unsigned)status, message);

    qgemm_packed_weights_free(packed);
    printf("gemm: i32 and u8 outputs equal the reference's (%d x %d x %d)\n", M, K, N);
    return conv();
}
