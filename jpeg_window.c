/* jpeg_window.c: decode one (y, x, h, w) window of a JPEG the way TensorFlow's
 * tf.image.decode_and_crop_jpeg does (tensorflow/core/lib/jpeg/jpeg_mem.cc, UncompressLow
 * with crop): libjpeg(-turbo), RGB out, JDCT_IFAST, fancy upsampling, jpeg_crop_scanline
 * for the columns, jpeg_skip_scanlines to y, rows read one at a time. Same library calls,
 * so the same pixels, including the window-edge upsampling that makes a cropped decode
 * differ from decode-then-slice. Unlike TF we stop after the window's last row instead of
 * entropy-decoding the rest of the file: that is most of the speed (the one behavioural
 * difference: a file damaged below the window, which TF rejects, decodes here). The whole
 * image is the window (0, 0, H, W), which is tf.io.decode_jpeg(channels=3).
 * Built by jpeg_window.py (the one place that holds the compiler command). */
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>

#define JW_OK 0
#define JW_EDATA -1   /* libjpeg rejected the bytes: jpeg_window_last_error() says why */
#define JW_EWINDOW -2 /* the window is empty or not inside the image */
#define JW_EARGS -3   /* NULL pointer, no bytes, or out_stride < 3 * w */
/* Row-buffer offset from 32-byte alignment: libjpeg-turbo's SIMD colour converters use
 * non-temporal stores on aligned rows, slower when the row is read again at once. */
#ifndef JW_ROW_SKEW
#define JW_ROW_SKEW 8
#endif

struct jw_error { struct jpeg_error_mgr pub; jmp_buf jump; };
static __thread char last_error[JMSG_LENGTH_MAX];

static void jw_error_exit(j_common_ptr c) {
  (*c->err->format_message)(c, last_error);
  longjmp(((struct jw_error *)c->err)->jump, 1);
}
/* Warnings (e.g. "extraneous bytes before marker") are ignored, as TF ignores them. */
static void jw_emit_message(j_common_ptr c, int level) { (void)c; (void)level; }
/* Running out of bytes is an error (TF, try_recover_truncated=False), never gray padding. */
static boolean jw_fill_input(j_decompress_ptr c) { ERREXIT(c, JERR_INPUT_EOF); return FALSE; }

const char *jpeg_window_last_error(void) { return last_error; }

/* Read the header and prepare cinfo; the caller has set up the error manager. */
static void jw_open(j_decompress_ptr c, const uint8_t *data, size_t size) {
  jpeg_create_decompress(c);
  jpeg_mem_src(c, (unsigned char *)data, (unsigned long)size);
  c->src->fill_input_buffer = jw_fill_input;
  jpeg_read_header(c, TRUE);
}

static void jw_init_error(struct jw_error *err, j_decompress_ptr c) {
  memset(c, 0, sizeof(*c)); /* so that an error inside jpeg_create_decompress is safe */
  c->err = jpeg_std_error(&err->pub);
  err->pub.error_exit = jw_error_exit;
  err->pub.emit_message = jw_emit_message;
  last_error[0] = 0;
}

int jpeg_window_header(const uint8_t *data, size_t size, int32_t *hw) {
  struct jpeg_decompress_struct cinfo;
  struct jw_error err;
  if (!data || !size || !hw) return JW_EARGS;
  jw_init_error(&err, &cinfo);
  if (setjmp(err.jump)) { jpeg_destroy_decompress(&cinfo); return JW_EDATA; }
  jw_open(&cinfo, data, size);
  hw[0] = (int32_t)cinfo.image_height;
  hw[1] = (int32_t)cinfo.image_width;
  jpeg_destroy_decompress(&cinfo);
  return JW_OK;
}

/* Decode rows [y, y + h) x columns [x, x + w) into out (h rows of out_stride bytes, RGB). */
static int jw_decode(const uint8_t *data, size_t size, int y, int x, int h, int w,
                     uint8_t *out, int out_stride) {
  struct jpeg_decompress_struct cinfo;
  struct jw_error err;
  JDIMENSION xoff = (JDIMENSION)x, cw = (JDIMENSION)w;
  JSAMPROW row;
  int cmyk, nc, i, j;
  if (!data || !size || !out || w <= 0 || out_stride < 3 * w) return JW_EARGS;
  jw_init_error(&err, &cinfo);
  if (setjmp(err.jump)) { jpeg_destroy_decompress(&cinfo); return JW_EDATA; }
  jw_open(&cinfo, data, size);
  if (h <= 0 || y < 0 || x < 0 || (long)y + h > (long)cinfo.image_height ||
      (long)x + w > (long)cinfo.image_width) {
    jpeg_destroy_decompress(&cinfo);
    return JW_EWINDOW;
  }
  /* TF: CMYK/YCCK decode to CMYK, converted below; everything else (grayscale included,
   * which libjpeg replicates) straight to RGB. */
  cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  cinfo.do_fancy_upsampling = TRUE;
  cinfo.dct_method = JDCT_IFAST;
  jpeg_start_decompress(&cinfo);
  jpeg_crop_scanline(&cinfo, &xoff, &cw); /* xoff moves left to an iMCU boundary */
  if (y > 0 && jpeg_skip_scanlines(&cinfo, (JDIMENSION)y) != (JDIMENSION)y)
    ERREXIT(&cinfo, JERR_INPUT_EOF);
  nc = cinfo.output_components;
  row = (*cinfo.mem->alloc_small)((j_common_ptr)&cinfo, JPOOL_IMAGE,
                                  (size_t)cinfo.output_width * nc + 64);
  row = (JSAMPROW)(((uintptr_t)row + 31) & ~(uintptr_t)31) + JW_ROW_SKEW;
  for (i = 0; i < h; i++) {
    const JSAMPLE *src;
    uint8_t *dst = out + (size_t)i * out_stride;
    if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) ERREXIT(&cinfo, JERR_INPUT_EOF);
    src = row + (size_t)(x - (int)xoff) * nc;
    if (!cmyk) { memcpy(dst, src, (size_t)w * 3); continue; }
    for (j = 0; j < w; j++, src += 4, dst += 3) {  /* TF's CMYK -> RGB, jpeg_mem.cc */
      int c = src[0], m = src[1], ye = src[2], k = src[3];
      if (cinfo.saw_Adobe_marker) {
        dst[0] = k * c / 255; dst[1] = k * m / 255; dst[2] = k * ye / 255;
      } else {
        dst[0] = (255 - k) * (255 - c) / 255; dst[1] = (255 - k) * (255 - m) / 255;
        dst[2] = (255 - k) * (255 - ye) / 255;
      }
    }
  }
  jpeg_destroy_decompress(&cinfo); /* the rows below the window are never decoded */
  return JW_OK;
}

/* ---- Restart-indexed files: entropy-decode the window's MCUs only ----------------------
 * A baseline single-scan JPEG with a restart marker after every MCU (write_ffcv's
 * write_mode=restart, made by jpeg_window_restart below) has every MCU byte-aligned with
 * its DC predictors reset, so the window's MCUs (plus one MCU row above and below where
 * chroma is vertically subsampled: the fancy upsampler's context) can be copied into a
 * smaller JPEG whose decode, cropped the same way relative to the MCU grid, gives the same
 * pixels as TF's decode of the whole file (tests/test_jpeg_window.py checks it against the
 * golden windows and the plain path). The rows above the window, which the plain path must
 * entropy-decode, cost nothing here. */
struct jw_layout { size_t sof, entropy; int height, width, mcu_w, mcu_h, mcus_x, mcus_y; };

static int be16(const uint8_t *p) { return (p[0] << 8) | p[1]; }

/* 1 and the layout when data is such a file, 0 otherwise (the plain path then decodes it). */
static int jw_layout_of(const uint8_t *d, size_t n, struct jw_layout *L) {
  size_t p = 2;
  int dri = 0, nf = 0, maxh = 1, maxv = 1, i;
  if (n < 4 || d[0] != 0xFF || d[1] != 0xD8) return 0;
  L->sof = 0;
  while (p + 4 <= n) {
    int m = d[p + 1], len = be16(d + p + 2);
    if (d[p] != 0xFF) return 0;
    if (m == 0xFF) { p++; continue; }
    if (len < 2 || p + 2 + len > n) return 0;
    if (m == 0xC0 || m == 0xC1) {
      if (len < 11 || len < 8 + 3 * d[p + 9]) return 0; /* len >= 11 first: d[p + 9] is in */
      L->sof = p;
      L->height = be16(d + p + 5);
      L->width = be16(d + p + 7);
      nf = d[p + 9];
      if (nf < 1 || nf > 4) return 0;
      for (i = 0; i < nf; i++) {
        int hs = d[p + 11 + 3 * i] >> 4, vs = d[p + 11 + 3 * i] & 15;
        if (nf == 1 && (hs != 1 || vs != 1)) return 0;
        maxh = hs > maxh ? hs : maxh;
        maxv = vs > maxv ? vs : maxv;
      }
    } else if (m >= 0xC2 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
      return 0; /* progressive, lossless or arithmetic-coded */
    } else if (m == 0xDD && len == 4) {
      dri = be16(d + p + 4);
    } else if (m == 0xDA) {
      if (len < 6 + 2 * nf || !L->sof || dri != 1 || d[p + 4] != nf || L->height == 0 || L->width == 0) return 0;
      L->entropy = p + 2 + len;
      L->mcu_w = 8 * maxh;
      L->mcu_h = 8 * maxv;
      L->mcus_x = (L->width + L->mcu_w - 1) / L->mcu_w;
      L->mcus_y = (L->height + L->mcu_h - 1) / L->mcu_h;
      return 1;
    }
    p += 2 + len;
  }
  return 0;
}

/* 1 when data takes the restart-indexed path (tests and benchmarks ask), else 0. */
int jpeg_window_indexed(const uint8_t *data, size_t size) {
  struct jw_layout L;
  return data && jw_layout_of(data, size, &L);
}

int jpeg_window_decode(const uint8_t *data, size_t size, int y, int x, int h, int w,
                       uint8_t *out, int out_stride) {
  struct jw_layout L;
  int r0, r1, c0, c1, margin, sub_h, sub_w, code;
  long k, last, copied = 0;
  size_t q, start, n_out;
  uint8_t *sub;
  if (!data || !size || !jw_layout_of(data, size, &L) || h <= 0 || w <= 0 || y < 0 ||
      x < 0 || (long)y + h > L.height || (long)x + w > L.width)
    return jw_decode(data, size, y, x, h, w, out, out_stride);
  margin = L.mcu_h > 8;
  r0 = y / L.mcu_h - margin;
  r0 = r0 < 0 ? 0 : r0;
  r1 = (y + h - 1) / L.mcu_h + margin;
  r1 = r1 >= L.mcus_y ? L.mcus_y - 1 : r1;
  c0 = x / L.mcu_w;
  c1 = (x + w - 1) / L.mcu_w;
  /* At least two MCU columns: libjpeg picks its upsampler by the image's chroma width
   * (fancy only above 2 samples), so a one-MCU image could get another one than TF's. */
  if (c1 == c0 && c0 > 0) c0--;
  else if (c1 == c0 && c1 < L.mcus_x - 1) c1++;
  if (r1 - r0 + 1 == L.mcus_y && c1 - c0 + 1 == L.mcus_x) /* nothing to leave out */
    return jw_decode(data, size, y, x, h, w, out, out_stride);
  n_out = L.entropy + size + 2 * (size_t)(r1 - r0 + 1) * (c1 - c0 + 1) + 2; /* + RSTs, EOI */
  if (!(sub = malloc(n_out))) return jw_decode(data, size, y, x, h, w, out, out_stride);
  memcpy(sub, data, L.entropy);
  /* the smaller image: the window's MCU rows and columns, the true edge where it is one */
  sub_h = r1 == L.mcus_y - 1 ? L.height - r0 * L.mcu_h : (r1 - r0 + 1) * L.mcu_h;
  sub_w = c1 == L.mcus_x - 1 ? L.width - c0 * L.mcu_w : (c1 - c0 + 1) * L.mcu_w;
  sub[L.sof + 5] = sub_h >> 8; sub[L.sof + 6] = sub_h & 255;
  sub[L.sof + 7] = sub_w >> 8; sub[L.sof + 8] = sub_w & 255;
  n_out = L.entropy;
  last = (long)r1 * L.mcus_x + c1;
  for (k = 0, start = q = L.entropy; k <= last && q + 1 < size;) {
    const uint8_t *ff = memchr(data + q, 0xFF, size - 1 - q);
    int m;
    if (!ff) break;
    q = (size_t)(ff - data);
    m = data[q + 1];
    if (m == 0x00) { q += 2; continue; } /* a stuffed 0xFF data byte */
    if (m == 0xFF) { q += 1; continue; } /* fill */
    if ((k / L.mcus_x) >= r0 && (k % L.mcus_x) >= c0 && (k % L.mcus_x) <= c1) {
      if (copied) { sub[n_out++] = 0xFF; sub[n_out++] = 0xD0 + (copied - 1) % 8; }
      memcpy(sub + n_out, data + start, q - start);
      n_out += q - start;
      copied++;
    }
    if (m < 0xD0 || m > 0xD7) { k++; break; } /* EOI (or another marker): no more MCUs */
    k++;
    start = q += 2;
  }
  if (k <= last) { /* fewer MCUs than the header says: let the plain path report it */
    free(sub);
    return jw_decode(data, size, y, x, h, w, out, out_stride);
  }
  sub[n_out++] = 0xFF;
  sub[n_out++] = 0xD9;
  code = jw_decode(sub, n_out, y - r0 * L.mcu_h, x - c0 * L.mcu_w, h, w, out, out_stride);
  free(sub);
  return code;
}

/* Lossless transcode for write_mode=restart: the same DCT coefficients, quantisation tables
 * and sampling (so the same pixels), baseline, optimised Huffman tables, a restart marker
 * after every MCU. *out is malloc'd (free it with jpeg_window_free). */
int jpeg_window_restart(const uint8_t *data, size_t size, uint8_t **out, size_t *out_size) {
  struct jpeg_decompress_struct src;
  struct jpeg_compress_struct dst;
  struct jw_error err;
  jvirt_barray_ptr *coefs;
  /* Ours, large enough that libjpeg never swaps in a buffer of its own (the output is the
   * same coefficients with optimal Huffman tables: about the input plus 2-3 bytes an MCU). */
  unsigned long cap = 2 * (unsigned long)size + 65536, len = cap;
  unsigned char *buf = malloc(cap), *mine = buf;
  if (!data || !size || !out || !out_size || !buf) { free(buf); return JW_EARGS; }
  jw_init_error(&err, &src);
  memset(&dst, 0, sizeof(dst));
  dst.err = &err.pub;
  if (setjmp(err.jump)) {
    jpeg_destroy_compress(&dst);
    jpeg_destroy_decompress(&src);
    free(mine);
    return JW_EDATA;
  }
  jw_open(&src, data, size);
  coefs = jpeg_read_coefficients(&src);
  jpeg_create_compress(&dst);
  jpeg_copy_critical_parameters(&src, &dst);
  dst.restart_interval = 1;
  dst.optimize_coding = TRUE;
  jpeg_mem_dest(&dst, &buf, &len);
  jpeg_write_coefficients(&dst, coefs);
  jpeg_finish_compress(&dst);
  jpeg_destroy_compress(&dst);
  jpeg_destroy_decompress(&src);
  if (buf != mine) free(mine); /* libjpeg grew it after all: its buffer is the output */
  *out = buf;
  *out_size = len;
  return JW_OK;
}

void jpeg_window_free(void *p) { free(p); }
