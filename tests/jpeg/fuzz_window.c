/* tests/jpeg/fuzz_window.c: one input through every C entry point of vit_speedrun/jpeg,
 * for coverage-guided fuzzing after a change to window.c, scan.c or plan.c.
 *
 * Why. sanitized_fuzz.py mutates files at random; a coverage-guided fuzzer (libFuzzer)
 * keeps the mutants that reach new code and so gets deep into the index and the plan (it
 * found the predictor overflow that test_window_sanitized.py now guards). Its input is 9
 * control bytes (window y, x, h, w as uint16 LE; an op byte) and then the file; a trailing
 * window index gets its FNV hash recomputed, so that mutations reach past the hash.
 *
 *   make fuzz FUZZ_SECONDS=600     clang, libFuzzer + ASan + UBSan; crashes land in build/
 *   cc ... -DFUZZ_FILES            a main() that runs the files named on its command line
 *                                  (how the tests run it with gcc, and how a crash replays)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef FUZZ_FILES
#include <sys/stat.h>
#endif

int jpeg_window_header(const uint8_t *data, size_t size, int32_t *hw);
int jpeg_window_decode(const uint8_t *, size_t, int, int, int, int, uint8_t *, int);
int jpeg_window_decode_indexed(const uint8_t *, size_t, int, int, int, int, uint8_t *, int);
int jpeg_window_indexed(const uint8_t *data, size_t size);
size_t jpeg_window_jpeg_size(const uint8_t *data, size_t size);
int jpeg_window_index(const uint8_t *, size_t, int, uint8_t **, size_t *);
int jpeg_window_restart(const uint8_t *, size_t, uint8_t **, size_t *);
void jpeg_window_free(void *);
long jpeg_window_plan(const uint8_t *, size_t, int, int, int, int, int32_t *, size_t);
uint32_t jw_fnv(const uint8_t *p, size_t n);
int jpeg_window_plan_layout(int32_t *out, int n);

/* record.py's capacity(): the record of any window fits (the record's fixed words and words
 * per group, P_SEGS and P_SEGW, as the library lays them out) */
static size_t capacity(int height, int width, size_t size) {
  int32_t layout[16];
  jpeg_window_plan_layout(layout, 16);
  return (4 * (size_t)layout[6] + 4 * (size_t)layout[7] * (size_t)(height / 8 + 2) *
          (size_t)(width / 8 + 2) + size + 67) / 4 * 4;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t n) {
  int32_t hw[2] = {0, 0};
  int cy, cx, ch, cw, op, y, x, h, w;
  size_t size, cap;
  uint8_t *d;
  if (n < 10) return 0;
  cy = in[0] | in[1] << 8, cx = in[2] | in[3] << 8, ch = in[4] | in[5] << 8;
  cw = in[6] | in[7] << 8, op = in[8];
  size = n - 9;
  d = malloc(size); /* exactly the file: a read past it is reported */
  memcpy(d, in + 9, size);
  if (size >= 16 && !memcmp(d + size - 8, "JWINDEX1", 8)) {
    uint32_t blen = d[size - 16] | d[size - 15] << 8 | d[size - 14] << 16 |
                    (uint32_t)d[size - 13] << 24;
    if (blen <= size - 16) {
      uint32_t fnv = jw_fnv(d + size - 16 - blen, blen);
      memcpy(d + size - 12, &fnv, 4);
    }
  }
  jpeg_window_indexed(d, size);
  jpeg_window_jpeg_size(d, size);
  if (jpeg_window_header(d, size, hw) == 0 && hw[0] > 0 && hw[1] > 0) {
    y = cy % hw[0], x = cx % hw[1];
    h = 1 + ch % (hw[0] - y), w = 1 + cw % (hw[1] - x);
    if (op & 1) y = cy - 100, x = cx - 100, h = ch % 300 - 5, w = cw % 300 - 5; /* any */
    if ((long)h * w <= 300 * 300 && h > 0 && w > 0) {
      uint8_t *out = malloc((size_t)h * w * 3);
      jpeg_window_decode(d, size, y, x, h, w, out, 3 * w);
      jpeg_window_decode_indexed(d, size, y, x, h, w, out, 3 * w);
      free(out);
    }
    /* a record that fits any window, or one of a size from the op byte (often too small) */
    cap = op & 2 ? (size_t)(op >> 2) * 148 : capacity(hw[0], hw[1], size);
    if (cap <= ((size_t)1 << 26)) {
      int32_t *rec = malloc(cap ? cap : 4);
      jpeg_window_plan(d, size, y, x, h, w, rec, cap);
      free(rec);
    }
    if ((long)hw[0] * hw[1] <= 256 * 256) {
      uint8_t *o = NULL;
      size_t on = 0;
      if ((op & 12) == 4 && jpeg_window_index(d, size, 8 + 8 * (op >> 4), &o, &on) == 0)
        jpeg_window_free(o);
      if ((op & 12) == 8 && jpeg_window_restart(d, size, &o, &on) == 0) jpeg_window_free(o);
    }
  }
  free(d);
  return 0;
}

#ifdef FUZZ_FILES
int main(int argc, char **argv) {
  int i, ran = 0;
  for (i = 1; i < argc; i++) {
    FILE *f = fopen(argv[i], "rb");
    struct stat st;
    size_t n = 0;
    uint8_t *buf = NULL;
    /* Only a regular file has a size to trust (ftell on a directory says LONG_MAX); on
       any error close and free before exiting, so that the sanitizers stay quiet and the
       exit status is the 2 said here. */
    if (!f || fstat(fileno(f), &st) || !S_ISREG(st.st_mode) ||
        !(buf = malloc((n = (size_t)st.st_size) ? n : 1)) || fread(buf, 1, n, f) != n) {
      fprintf(stderr, "fuzz_window: cannot read %s\n", argv[i]);
      free(buf);
      if (f) fclose(f);
      return 2;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    ran++;
  }
  printf("fuzz_window: ran %d inputs\n", ran);
  return 0;
}
#endif
