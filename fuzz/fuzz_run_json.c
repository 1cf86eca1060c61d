/* fuzz_run_json -- pk_run_open (src/run/run.c) on a run directory: the input as
 * run.json next to a valid trajectory.bin (2 steps of 3 examples) and
 * standardize.npy, then as trajectory.bin (with a valid crc32 trailer
 * appended) next to a valid run.json. */
#include "fuzz_common.h"
#include <pathkernel.h>
#include "kernel/kernel.h"

static const char RUN_JSON[] =
    "{\"format\":\"pathkernel-run\",\"version\":1,\"status\":\"complete\",\"steps\":2,"
    "\"keep\":1,\"seed\":\"0000000000000001\",\"model\":{\"spec\":\"mlp:2:tanh\","
    "\"param\":\"standard\",\"sigma_w\":1,\"sigma_b\":0,\"inputs\":2,\"outputs\":2,"
    "\"params\":12,\"init\":\"seeded\"},\"loss\":\"softmax\",\"optim\":{\"kind\":\"sgd\","
    "\"lr\":0.1,\"batch\":1,\"momentum\":0.9,\"beta1\":0.9,\"beta2\":0.999,\"eps\":1e-08,"
    "\"weight_decay\":0,\"schedule\":\"constant\",\"step_every\":100,\"gamma\":0.5,"
    "\"lr_min\":0},\"data\":{\"spec\":\"/nonexistent/x.csv\",\"first\":0,\"random\":0,"
    "\"seed\":\"0000000000000000\",\"standardize\":true,\"n\":3,\"d\":2,\"ty\":1,"
    "\"img_h\":0,\"img_w\":0,\"fingerprint\":\"0980fe25fb57051c\"}}";

static void setup(void)
{
    static int done;
    if (done) return;
    done = 1;
    char path[512];
    /* standardize.npy: (2, 2) float64, mean row then std row */
    unsigned char npy[256];
    double ms[4] = { 0, 0, 1, 1 };
    size_t n = npy_image(npy, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }", ms, 4);
    fuzz_write("standardize.npy", npy, n, path, sizeof path);
}

/* A valid trajectory: T 2, N 3, batches {0} and {2}. */
static unsigned char *valid_traj(size_t *len)
{
    unsigned char b[256];
    size_t n = 0;
    uint32_t u32[2] = { 1, 0 };
    uint64_t hdr[3] = { 2, 3, 2 };
    double lr[2] = { 0.1, 0.1 }, loss[2] = { 1, 0.5 };
    uint64_t off[3] = { 0, 1, 2 };
    uint32_t idx[2] = { 0, 2 };
    memcpy(b + n, "PKTRAJ\0\0", 8); n += 8;
    memcpy(b + n, u32, 8); n += 8;
    memcpy(b + n, hdr, 24); n += 24;
    memcpy(b + n, lr, 16); n += 16;
    memcpy(b + n, loss, 16); n += 16;
    memcpy(b + n, off, 24); n += 24;
    memcpy(b + n, idx, 8); n += 8;
    *len = n + 4;
    return fuzz_with_crc(b, n);
}

static void open_close(void)
{
    pk_run *run;
    if (pk_run_open(fuzz_dir(), &run) == PK_OK) pk_run_close(run);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[512];
    size_t tl;
    setup();
    unsigned char *t = valid_traj(&tl);
    fuzz_write("trajectory.bin", t, tl, path, sizeof path);
    free(t);
    fuzz_write("run.json", data, size, path, sizeof path);
    open_close();

    fuzz_write("run.json", RUN_JSON, sizeof RUN_JSON - 1, path, sizeof path);
    t = fuzz_with_crc(data, size);
    fuzz_write("trajectory.bin", t, size + 4, path, sizeof path);
    free(t);
    open_close();
    return 0;
}
