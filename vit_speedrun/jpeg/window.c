/* vit_speedrun/jpeg/window.c: decode one (y, x, h, w) window of a JPEG the way TensorFlow's
 * tf.image.decode_and_crop_jpeg does (tensorflow/core/lib/jpeg/jpeg_mem.cc, UncompressLow
 * with crop): libjpeg(-turbo), RGB out, JDCT_IFAST, fancy upsampling, jpeg_crop_scanline
 * for the columns, jpeg_skip_scanlines to y, rows read one at a time. Same library calls,
 * so the same pixels, including the window-edge upsampling that makes a cropped decode
 * differ from decode-then-slice. Unlike TF we stop after the window's last row instead of
 * entropy-decoding the rest of the file: that is most of the speed (the one behavioural
 * difference: a file damaged below the window, which TF rejects, decodes here). The whole
 * image is the window (0, 0, H, W), which is tf.io.decode_jpeg(channels=3).
 * Two faster paths give the same pixels by decoding a smaller JPEG made of the window's
 * MCUs: a file followed by its window index (write_ffcv's train default, below) and a file
 * with a restart marker after every MCU (write_mode=restart). jpeg_window_decode picks.
 * Built by vit_speedrun/jpeg/window.py (the one place that holds the compiler command). */
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>

#include "scan.h"

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
 * its DC predictors reset, so the window's MCUs (plus the fancy upsampler's context rows,
 * jw_rows) can be copied into a
 * smaller JPEG whose decode, cropped the same way relative to the MCU grid, gives the same
 * pixels as TF's decode of the whole file (tests/jpeg/test_window.py checks it against the
 * golden windows and the plain path). The rows above the window, which the plain path must
 * entropy-decode, cost nothing here. */

/* Zero bytes after a smaller JPEG's EOI, where libjpeg never reads: libjpeg-turbo takes its
 * fast Huffman decoder only while 512 bytes per block of an MCU remain in the buffer, so
 * without them the last kilobytes of every window would take the slow one (same pixels). */
#define JW_PAD 8192
/* 1 and the layout when data has a restart marker after every MCU, 0 otherwise. */
static int jw_layout_of(const uint8_t *d, size_t n, struct jw_layout *L) {
  struct jw_scan S;
  if (!jw_parse(d, n, &S) || S.dri != 1) return 0;
  *L = S.L;
  return 1;
}

/* ---- Original bytes with a window index (write_ffcv's default for the train split) ------
 * The file's own bytes, unchanged, followed (after its EOI, where every decoder stops) by
 * an index: for every MCU row, at every `group`-th MCU, the bit where that MCU starts in
 * the entropy-coded data and the DC predictors there. A window then costs about what it
 * costs in a restart file: its rows' segments (grown to whole groups) are copied byte for
 * byte into a smaller JPEG (jw_index_decode says how), which is decoded with the same
 * calls and the same window geometry as the restart path. The rows above the window and
 * the columns beside it are never entropy-decoded. The index is
 *   body: varints: version 1, group, number of points, components; then per point the bit
 *         position's increase and each predictor's change (zigzag);
 *   footer: u32 LE body length, u32 LE FNV-1a of the body, "JWINDEX1".
 * Anything unusable (a bad footer or hash, a category the DC table cannot encode) takes the
 * plain path on the JPEG's bytes, so a window is always TF's. write_ffcv also checks every
 * index point against the plain decode before it stores a file with its index. */
/* The JPEG's own bytes in front of an index (all of data when there is none). */
size_t jpeg_window_jpeg_size(const uint8_t *data, size_t size) {
  const uint8_t *body;
  size_t blen, n0 = data && size ? jw_index_of(data, size, &body, &blen) : 0;
  return n0 ? n0 : size;
}

/* Append an index point every `span` pixels of each MCU row (every span / MCU width MCUs,
 * at least one) to data: *out (malloc'd, free with jpeg_window_free) = data, body, footer.
 * JW_NOINDEX when the file is not a baseline single-scan file without restart markers whose
 * scan decodes cleanly, or its AC table cannot pad the reader's lead MCU. */
int jpeg_window_index(const uint8_t *data, size_t size, int span, uint8_t **out,
                      size_t *out_size) {
  struct jw_scan S;
  struct jw_huff dc[4], ac[4];
  uint8_t *u = NULL, *o = NULL, *w;
  uint32_t *at = NULL;
  size_t n, m = 0, i, bit = 0, last = 0, npts;
  int r, c, b, k, diff[10], pred[4] = {0}, lastpred[4] = {0}, code = JW_NOINDEX, ng, group;
  uint8_t plan[8][8];
  if (!data || !size || !out || !out_size || span < 1 || span > 65535) return JW_EARGS;
  if (size >= (1u << 28) || !jw_parse(data, size, &S) || S.dri != 0 || !jw_huffs(&S, dc, ac, 1) ||
      S.L.mcus_x < 2 || !jw_fillers(&ac[S.ta[0]], plan))
    return JW_NOINDEX;
  for (k = 0; k < S.ns; k++) if (!ac[S.ta[k]].size[0]) return JW_NOINDEX; /* no EOB code */
  group = span / S.L.mcu_w > 1 ? span / S.L.mcu_w : 1;
  n = size - S.L.entropy;
  u = malloc(n + 16);
  at = malloc((n + 1) * sizeof(*at));
  ng = (S.L.mcus_x + group - 1) / group;
  npts = (size_t)S.L.mcus_y * ng + 1;
  o = malloc(size + 32 + npts * (5 + 5 * (size_t)S.ns) + 16);
  if (!u || !at || !o) { code = JW_EARGS; goto done; }
  for (i = 0; i < n; i++) { /* unstuff up to the first marker; at[j]: where u[j] was */
    const uint8_t *d = data + S.L.entropy;
    if (d[i] == 0xFF && (i + 1 >= n || d[i + 1] != 0x00)) break;
    at[m] = (uint32_t)i;
    u[m++] = d[i];
    i += d[i] == 0xFF;
  }
  at[m] = (uint32_t)i;
  memset(u + m, 0, 16);
  memcpy(o, data, size);
  w = o + size;
  w = jw_put_var(w, 1);
  w = jw_put_var(w, (uint64_t)group);
  w = jw_put_var(w, npts);
  w = jw_put_var(w, (uint64_t)S.ns);
  for (r = 0; r <= S.L.mcus_y; r++) {
    for (c = 0; c < (r < S.L.mcus_y ? S.L.mcus_x : 1); c++) {
      int point = c % group == 0;
      if (point) { /* where this MCU starts, in the file's (stuffed) bytes */
        size_t pos = (size_t)at[bit >> 3] * 8 + (bit & 7);
        w = jw_put_var(w, pos - last);
        last = pos;
        for (k = 0; k < S.ns; k++) {
          w = jw_put_var(w, jw_zig(pred[k] - lastpred[k]));
          lastpred[k] = pred[k];
        }
      }
      if (r == S.L.mcus_y) break;
      if (!jw_mcu(&S, dc, ac, u, &bit, 8 * m, diff)) goto done;
      for (b = 0; b < S.nb; b++) {
        k = S.comp_of[b];
        pred[k] += diff[b];
        if (pred[k] > 65535 || pred[k] < -65535) goto done; /* no valid file: libjpeg wraps */
      }
    }
  }
  i = (size_t)(w - o - size);
  jw_put_le32(w, (uint32_t)i);
  jw_put_le32(w + 4, jw_fnv(o + size, i));
  memcpy(w + 8, jw_magic, 8);
  *out = o;
  *out_size = size + i + 16;
  o = NULL;
  code = JW_OK;
done:
  free(u);
  free(at);
  free(o);
  return code;
}

/* Bits into a JPEG's entropy-coded bytes: whole bytes out, a zero stuffed after each 0xFF. */
struct jw_out { uint8_t *o; size_t n; uint32_t acc; int nb; };
static void jw_emit(struct jw_out *w, uint32_t v, int len) { /* len <= 16 */
  w->acc = (w->acc << len) | (v & ((1u << len) - 1));
  w->nb += len;
  while (w->nb >= 8) {
    uint8_t b = (uint8_t)(w->acc >> (w->nb -= 8));
    w->o[w->n++] = b;
    if (b == 0xFF) w->o[w->n++] = 0x00;
  }
}

/* The window through the index; JW_NOINDEX when it cannot be used (the caller then decodes
 * the JPEG's bytes the plain way). The smaller JPEG is one scan whose rows each start with a
 * lead MCU of our own, one column left of the window's MCUs: its DC differences take the
 * predictors from where the previous row's segment ended to the index's values where this
 * row's starts, and its fillers (AC coefficients) make it end where the segment's first bit
 * sits in its byte, so that the segment's bytes are copied as they are. The lead column is
 * outside jpeg_crop_scanline's window, which starts at an MCU boundary as an image edge: it
 * is entropy-decoded and never reaches a pixel. No restart markers: libjpeg-turbo's fast
 * Huffman decoder stops at every marker. */
static int jw_index_decode(const uint8_t *data, size_t n0, const uint8_t *body, size_t blen,
                           int y, int x, int h, int w, uint8_t *out, int out_stride) {
  struct jw_iwin W;
  const struct jw_scan *S = &W.S;
  const struct jw_huff *dc = W.dc, *ac = W.ac;
  struct jw_out o;
  const uint8_t *d;
  size_t need;
  int r0, r1, c0, rows, G, sub_h, r, b, code = JW_NOINDEX;
  uint8_t *sub = NULL;
  if (!jw_index_window(data, n0, body, blen, y, x, h, w, &W)) return JW_NOINDEX;
  r0 = W.r0, r1 = W.r1, c0 = W.c0, rows = W.rows, G = W.groups;
  need = S->L.entropy + 4; /* + the last byte (and its stuffed zero), EOI */
  for (r = 0; r < rows; r++) { /* segments inside the entropy data, in order (jw_iw_lead) */
    size_t a = jw_iw_pos(&W, r, 0), e = jw_iw_pos(&W, r, G);
    /* the segment with its first byte stuffed, then the lead MCU (10 blocks of DC and
     * EOB, 7 fillers, and up to 7 bits left by the row before: at most 659 bits, under 96
     * bytes) stuffed */
    need += (e >> 3) - (a >> 3) + 2 + 2 * 96;
  }
  if (!(sub = malloc(need + JW_PAD))) goto done;
  memcpy(sub, data, S->L.entropy); /* the header, with the smaller size */
  sub_h = r1 == S->L.mcus_y - 1 ? S->L.height - r0 * S->L.mcu_h : rows * S->L.mcu_h;
  sub[S->L.sof + 5] = (uint8_t)(sub_h >> 8); sub[S->L.sof + 6] = (uint8_t)sub_h;
  sub[S->L.sof + 7] = (uint8_t)(W.sub_w >> 8); sub[S->L.sof + 8] = (uint8_t)W.sub_w;
  o.o = sub;
  o.n = S->L.entropy;
  o.acc = 0;
  o.nb = 0;
  d = data + S->L.entropy;
  for (r = 0; r < rows; r++) { /* one scan: each row's lead MCU, then its segment */
    size_t a = jw_iw_pos(&W, r, 0), e = jw_iw_pos(&W, r, G), i = a >> 3;
    int t = (int)(a & 7), len = o.nb, s, f, fill, val[4];
    /* the lead MCU's DC differences take the predictors from where the previous row's
     * segment ended (zero at the start) to where this one starts; jw_index_window checked
     * that the DC tables code them and that the segment goes past its first byte */
    if (!jw_iw_lead(&W, data, n0, r, val)) goto done;
    for (b = 0; b < S->nb; b++) {
      const struct jw_huff *hd = &dc[S->td[S->comp_of[b]]], *ha = &ac[S->ta[S->comp_of[b]]];
      s = b == S->first[S->comp_of[b]] ? jw_category(val[S->comp_of[b]]) : 0;
      len += hd->size[s] + s + ha->size[0];
    }
    fill = ((t - len) % 8 + 8) % 8; /* so that it ends t bits into a byte */
    for (b = 0; b < S->nb; b++) {
      const struct jw_huff *hd = &dc[S->td[S->comp_of[b]]], *ha = &ac[S->ta[S->comp_of[b]]];
      int v = b == S->first[S->comp_of[b]] ? val[S->comp_of[b]] : 0;
      s = jw_category(v);
      jw_emit(&o, hd->code[s], hd->size[s]);
      if (s) jw_emit(&o, (uint32_t)(v < 0 ? v - 1 : v), s);
      for (f = 0; b == 0 && W.plan[fill][f]; f++) {
        s = W.plan[fill][f];
        jw_emit(&o, ha->code[s], ha->size[s]);
        jw_emit(&o, (1u << s) - 1, s);
      }
      jw_emit(&o, ha->code[0], ha->size[0]);
    }
    /* o.nb == t now: the lead's last t bits share a byte with the segment's first bits */
    if (t) {
      uint8_t first = (uint8_t)((o.acc << (8 - t)) | (d[i] & ((1u << (8 - t)) - 1)));
      o.o[o.n++] = first;
      if (first == 0xFF) o.o[o.n++] = 0x00;
      i += d[i] == 0xFF ? 2 : 1; /* past the byte (and its stuffed zero) */
      o.nb = 0;
    }
    if (o.nb || i > (e >> 3)) goto done;
    memcpy(o.o + o.n, d + i, (e >> 3) - i); /* the segment's bytes, stuffing and all */
    o.n += (e >> 3) - i;
    o.acc = (e & 7) ? d[e >> 3] >> (8 - (e & 7)) : 0; /* its last bits, still pending */
    o.nb = (int)(e & 7);
  }
  if (o.nb) jw_emit(&o, 0x7F, 8 - o.nb); /* pad with ones to the byte */
  o.o[o.n++] = 0xFF;
  o.o[o.n++] = 0xD9;
  memset(sub + o.n, 0, JW_PAD);
  code = jw_decode(sub, o.n + JW_PAD, y - r0 * S->L.mcu_h, x - c0 * S->L.mcu_w + S->L.mcu_w, h,
                   w, out, out_stride);
done:
  jw_iwin_free(&W);
  free(sub);
  return code;
}

/* 2 when data ends with a window index, 1 when it has a restart marker after every MCU
 * (its windows take those paths; tests and benchmarks ask), 0 otherwise. */
int jpeg_window_indexed(const uint8_t *data, size_t size) {
  struct jw_layout L;
  const uint8_t *body;
  size_t blen;
  if (!data || !size) return 0;
  return jw_index_of(data, size, &body, &blen) ? 2 : jw_layout_of(data, size, &L);
}

/* The index path alone: JW_NOINDEX where jpeg_window_decode would take another (tests). */
int jpeg_window_decode_indexed(const uint8_t *data, size_t size, int y, int x, int h, int w,
                               uint8_t *out, int out_stride) {
  const uint8_t *body;
  size_t blen, n0 = data && size && out ? jw_index_of(data, size, &body, &blen) : 0;
  return n0 ? jw_index_decode(data, n0, body, blen, y, x, h, w, out, out_stride) : JW_NOINDEX;
}

int jpeg_window_decode(const uint8_t *data, size_t size, int y, int x, int h, int w,
                       uint8_t *out, int out_stride) {
  struct jw_layout L;
  int r0, r1, c0, c1, sub_h, sub_w, code;
  long k, last, copied = 0;
  size_t q, start, n_out;
  uint8_t *sub;
  const uint8_t *body;
  size_t n0, blen;
  if (data && size && (n0 = jw_index_of(data, size, &body, &blen))) {
    code = jw_index_decode(data, n0, body, blen, y, x, h, w, out, out_stride);
    return code != JW_NOINDEX ? code : jw_decode(data, n0, y, x, h, w, out, out_stride);
  }
  if (!data || !size || !jw_layout_of(data, size, &L) || h <= 0 || w <= 0 || y < 0 ||
      x < 0 || (long)y + h > L.height || (long)x + w > L.width)
    return jw_decode(data, size, y, x, h, w, out, out_stride);
  jw_rows(&L, y, h, &r0, &r1);
  c0 = x / L.mcu_w;
  c1 = (x + w - 1) / L.mcu_w;
  /* At least two MCU columns: libjpeg picks its upsampler by the image's chroma width
   * (fancy only above 2 samples), so a one-MCU image could get another one than TF's. */
  if (c1 == c0 && c0 > 0) c0--;
  else if (c1 == c0 && c1 < L.mcus_x - 1) c1++;
  if (r1 - r0 + 1 == L.mcus_y && c1 - c0 + 1 == L.mcus_x) /* nothing to leave out */
    return jw_decode(data, size, y, x, h, w, out, out_stride);
  n_out = L.entropy + size + 2 * (size_t)(r1 - r0 + 1) * (c1 - c0 + 1) + 2; /* + RSTs, EOI */
  if (!(sub = malloc(n_out + JW_PAD))) return jw_decode(data, size, y, x, h, w, out, out_stride);
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
  memset(sub + n_out, 0, JW_PAD);
  code = jw_decode(sub, n_out + JW_PAD, y - r0 * L.mcu_h, x - c0 * L.mcu_w, h, w, out, out_stride);
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
