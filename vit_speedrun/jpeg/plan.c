/* vit_speedrun/jpeg/plan.c: one window of a file with a window index, laid out for the
 * device decoder (vit_speedrun/jpeg/device/). No Huffman decoding happens here, that is the
 * point: the record holds the geometry of libjpeg's cropped decode, the IFAST dequantisation
 * multipliers, the scan's Huffman tables as stored, and the window's MCU rows' entropy-coded
 * bytes copied as they are, cut at the index points into groups of MCUs (the bit where each
 * starts and ends, and the DC predictors there) that the device decodes in parallel.
 *
 * The record (int32 words; device/record.py names them): the fixed part below, then
 * P_SEGW words per group, then the bytes. A window gets JW_PLAN_CPU, and the caller decodes
 * it on the CPU (jpeg_window_decode), wherever that decode would not take the index path
 * (jw_index_window: the very checks of jw_index_decode) or the device could not match
 * libjpeg: not baseline 8-bit YCbCr or grayscale, an upsampling other than libjpeg's fancy
 * or integral ones, a crop whose subsampled width is under 2 samples (libjpeg then picks
 * its upsampler again), a DC table with a symbol over 15 (libjpeg refuses the file), or a
 * record larger than `cap` bytes. */
#include <string.h>

#include "scan.h"

#define JW_PLAN_CPU -5

enum {
  P_STATUS, P_HEIGHT, P_WIDTH, P_NC, P_HMAX, P_VMAX, P_Y, P_X, P_H, P_W,
  P_R0, P_ROWS, P_C0, P_COLS, P_NSEG, P_NBYTES, P_BYTES_AT, P_XAL, P_NB, P_MCUW, P_MCUH,
  P_TOTAL,
  P_COMP = 24,         /* 8 words per component, P_C_* below */
  P_COMPOF = 48,       /* the component of each of the MCU's (at most 10) blocks */
  P_QT = 64,           /* 64 IFAST multipliers per component, natural order */
  P_HUFF = 256,        /* slot 2c: component c's DC table, 2c + 1: its AC table */
  P_HUFFW = 272,       /* per slot: bits[1..16], then 256 symbols */
  P_SEGS = P_HUFF + 6 * P_HUFFW,
  P_SEGW = 12          /* per group: row, col, MCUs, start bit, end bit, 3 + 3 predictors */
};
enum { P_C_HS, P_C_VS, P_C_UP, P_C_CW, P_C_CH, P_C_FIRST };
enum { UP_FULL, UP_H2V1, UP_H2V2, UP_H1V2, UP_INT };

static const int natural_order[64] = {
  0,  1,  8, 16,  9,  2,  3, 10, 17, 24, 32, 25, 18, 11,  4,  5,
  12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13,  6,  7, 14, 21, 28,
  35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
  58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63};
/* jddctmgr.c's aanscales: the IFAST IDCT's prescale, 2^14 * s(u) * s(v). */
static const int aanscales[64] = {
  16384, 22725, 21407, 19266, 16384, 12873,  8867,  4520,
  22725, 31521, 29692, 26722, 22725, 17855, 12299,  6270,
  21407, 29692, 27969, 25172, 21407, 16819, 11585,  5906,
  19266, 26722, 25172, 22654, 19266, 15137, 10426,  5315,
  16384, 22725, 21407, 19266, 16384, 12873,  8867,  4520,
  12873, 17855, 16819, 15137, 12873, 10114,  6967,  3552,
   8867, 12299, 11585, 10426,  8867,  6967,  4799,  2446,
   4520,  6270,  5906,  5315,  4520,  3552,  2446,  1247};

/* What the markers before the scan say that jw_parse does not keep: each component's id
 * and quantisation table, the tables (natural order), the sample precision, and the two
 * markers that decide the colour space (libjpeg's default_decompress_parms). */
struct jw_frame { int precision, nf, ids[4], tq[4], qdef[4], jfif, adobe; int32_t q[4][64]; };

static int jw_frame_of(const uint8_t *d, size_t n, struct jw_frame *F) {
  size_t p = 2;
  memset(F, 0, sizeof(*F));
  while (p + 4 <= n) {
    int m = d[p + 1], len = (d[p + 2] << 8) | d[p + 3], i;
    if (d[p] != 0xFF) return 0;
    if (m == 0xFF) { p++; continue; }
    if (len < 2 || p + 2 + (size_t)len > n) return 0;
    if (m == 0xDA) return F->nf > 0;
    if (m == 0xC0 || m == 0xC1) {
      if (len < 8) return 0;
      F->precision = d[p + 4];
      F->nf = d[p + 9];
      if (F->nf < 1 || F->nf > 4 || len < 8 + 3 * F->nf) return 0;
      for (i = 0; i < F->nf; i++) {
        F->ids[i] = d[p + 10 + 3 * i];
        F->tq[i] = d[p + 12 + 3 * i];
      }
    } else if (m == 0xDB) {
      size_t q = p + 4, end = p + 2 + (size_t)len;
      while (q < end) {
        int pq = d[q] >> 4, tq = d[q] & 15, k;
        if (pq > 1 || tq > 3 || q + 1 + 64 * (size_t)(pq + 1) > end) return 0;
        for (k = 0; k < 64; k++)
          F->q[tq][natural_order[k]] = pq ? (d[q + 1 + 2 * k] << 8) | d[q + 2 + 2 * k]
                                          : d[q + 1 + k];
        F->qdef[tq] = 1;
        q += 1 + 64 * (size_t)(pq + 1);
      }
    } else if (m == 0xE0 && len >= 7 && !memcmp(d + p + 4, "JFIF", 5)) {
      F->jfif = 1;
    } else if (m == 0xEE && len >= 12 && !memcmp(d + p + 4, "Adobe", 5)) {
      F->adobe = 1;
    }
    p += 2 + (size_t)len;
  }
  return 0;
}

/* The upsampling libjpeg's jinit_upsampler picks for a component (fancy, as TF asks), or -1
 * where it would refuse the file. */
static int jw_upsampling(int hs, int vs, int hmax, int vmax, int width) {
  if (hs == hmax && vs == vmax) return UP_FULL;
  if (hs * 2 == hmax && vs == vmax) return width > 2 ? UP_H2V1 : UP_INT;
  if (hs == hmax && vs * 2 == vmax) return UP_H1V2;
  if (hs * 2 == hmax && vs * 2 == vmax) return width > 2 ? UP_H2V2 : UP_INT;
  if (hmax % hs == 0 && vmax % vs == 0) return UP_INT;
  return -1;
}

/* The record of window (y, x, h, w) of data into rec (cap bytes, 4-byte aligned): its
 * length in bytes, or JW_PLAN_CPU. */
static long jw_plan_record(const uint8_t *data, size_t n0, const struct jw_iwin *W, int y,
                           int x, int h, int w, int32_t *rec, size_t cap);

long jpeg_window_plan(const uint8_t *data, size_t size, int y, int x, int h, int w,
                      int32_t *rec, size_t cap) {
  long out = JW_PLAN_CPU;
  const uint8_t *body;
  size_t n0, blen;
  struct jw_iwin W;
  if (!data || !rec || cap < 4 * (size_t)P_SEGS) return JW_PLAN_CPU;
  if (!(n0 = jw_index_of(data, size, &body, &blen))) return JW_PLAN_CPU;
  /* every check of jw_index_decode (the CPU's index path): the same windows are refused */
  if (!jw_index_window(data, n0, body, blen, y, x, h, w, &W)) return JW_PLAN_CPU;
  out = jw_plan_record(data, n0, &W, y, x, h, w, rec, cap);
  jw_iwin_free(&W);
  return out;
}

/* jpeg_window_plan's record of window W of data[0, n0). */
static long jw_plan_record(const uint8_t *data, size_t n0, const struct jw_iwin *W, int y,
                           int x, int h, int w, int32_t *rec, size_t cap) {
  const struct jw_scan *S = &W->S;
  struct jw_frame F;
  size_t nbytes = 0, at;
  int r0 = W->r0, c0 = W->c0, c1 = W->c1, g0 = W->g0, rows = W->rows, groups = W->groups,
      group = W->group, k, ci, b, g, r, hmax, vmax, xal, ow, nseg, tq[4];
  int32_t *segs;
  uint8_t *bytes;
  /* what the device needs on top: baseline 8-bit YCbCr (or grayscale), libjpeg's sampling */
  if (!jw_frame_of(data, n0, &F) || F.precision != 8 || F.nf != S->ns || (S->ns != 1 && S->ns != 3))
    return JW_PLAN_CPU;
  if (S->ns == 3 && !F.jfif && (F.adobe || (F.ids[0] == 'R' && F.ids[1] == 'G' && F.ids[2] == 'B')))
    return JW_PLAN_CPU;
  for (ci = 0; ci < S->ns; ci++) {
    const struct jw_table *t = &S->tables[0][S->td[ci]];
    int total = 0;
    for (k = 1; k <= 16; k++) total += t->bits[k];
    for (k = 0; k < total; k++) if (t->vals[k] > 15) return JW_PLAN_CPU;
  }
  memset(rec, 0, 4 * (size_t)P_SEGS);
  hmax = S->L.mcu_w / 8;
  vmax = S->L.mcu_h / 8;
  /* jpeg_crop_scanline: the crop starts at the iMCU column, each component's width follows */
  xal = x / S->L.mcu_w * S->L.mcu_w;
  ow = x + w - xal;
  for (ci = 0; ci < S->ns; ci++) {
    int32_t *c = rec + P_COMP + 8 * ci;
    int blocks = ci + 1 < S->ns ? S->first[ci + 1] - S->first[ci] : S->nb - S->first[ci];
    int hs = 1, vs = 1, full_w, crop_w;
    if (S->ns > 1) { /* component ci of the scan is frame component ids[j] */
      const uint8_t *sof = data + S->L.sof + 10, *sos = data + S->sos + 5;
      for (k = 0; k < F.nf && sof[3 * k] != sos[2 * ci]; k++) {}
      if (k == F.nf) return JW_PLAN_CPU;
      hs = sof[3 * k + 1] >> 4;
      vs = sof[3 * k + 1] & 15;
      if (hs * vs != blocks || F.tq[k] > 3 || !F.qdef[F.tq[k]]) return JW_PLAN_CPU;
      tq[ci] = F.tq[k];
    } else {
      if (F.tq[0] > 3 || !F.qdef[F.tq[0]]) return JW_PLAN_CPU;
      tq[ci] = F.tq[0];
    }
    full_w = (int)(((long)S->L.width * hs + hmax - 1) / hmax);
    crop_w = (int)(((long)ow * hs + hmax - 1) / hmax);
    c[P_C_HS] = hs;
    c[P_C_VS] = vs;
    c[P_C_UP] = jw_upsampling(hs, vs, hmax, vmax, full_w);
    c[P_C_CW] = crop_w;
    c[P_C_CH] = (int)(((long)S->L.height * vs + vmax - 1) / vmax);
    c[P_C_FIRST] = S->first[ci];
    if (c[P_C_UP] < 0 || crop_w < 2) return JW_PLAN_CPU;
    for (k = 0; k < 64; k++) { /* jddctmgr.c: (IFAST_MULT_TYPE)DESCALE(q * aanscale, 12) */
      int32_t m = (int32_t)(((int64_t)F.q[tq[ci]][k] * aanscales[k] + 2048) >> 12);
      rec[P_QT + 64 * ci + k] = (int16_t)m;
    }
    for (b = 0; b < 2; b++) {
      const struct jw_table *t = &S->tables[b][b ? S->ta[ci] : S->td[ci]];
      int32_t *slot = rec + P_HUFF + (2 * ci + b) * P_HUFFW;
      for (k = 0; k < 16; k++) slot[k] = t->bits[k + 1];
      for (k = 0; k < 256; k++) slot[16 + k] = t->vals[k];
    }
  }
  for (b = 0; b < S->nb; b++) rec[P_COMPOF + b] = S->comp_of[b];
  nseg = rows * groups;
  at = 4 * ((size_t)P_SEGS + (size_t)P_SEGW * nseg);
  if (at > cap) return JW_PLAN_CPU;
  segs = rec + P_SEGS;
  memset(segs, 0, 4 * (size_t)P_SEGW * nseg);
  /* each group's segment: point (r, gi) starts it and (r, gi + 1) ends it. Positions: bits
   * into the entropy data. */
  for (r = 0; r < rows; r++) {
    for (g = 0; g < groups; g++) {
      int32_t *sg = segs + P_SEGW * (r * groups + g);
      if (jw_iw_pos(W, r, g) > 0x7fffffff || jw_iw_pos(W, r, g + 1) > 0x7fffffff)
        return JW_PLAN_CPU;
      sg[0] = r;
      sg[1] = (g0 + g) * group - c0;
      sg[2] = (g0 + g + 1) * group > S->L.mcus_x ? S->L.mcus_x - (g0 + g) * group : group;
      sg[3] = (int32_t)jw_iw_pos(W, r, g);
      sg[4] = (int32_t)jw_iw_pos(W, r, g + 1);
      for (ci = 0; ci < S->ns; ci++) {
        sg[5 + ci] = (int32_t)jw_iw_pred(W, r, g)[ci];
        sg[8 + ci] = (int32_t)jw_iw_pred(W, r, g + 1)[ci];
      }
    }
  }
  /* copy each row's bytes (from its first point's byte to its last point's) after the
   * groups, and make the groups' positions bits into those bytes */
  bytes = (uint8_t *)rec + at;
  for (r = 0; r < rows; r++) {
    int32_t *sg = segs + P_SEGW * r * groups;
    size_t a = (size_t)sg[3] >> 3, e = ((size_t)sg[P_SEGW * (groups - 1) + 4] >> 3) + 1;
    int64_t shift;
    e = e > n0 - S->L.entropy ? n0 - S->L.entropy : e;
    if (at + nbytes + (e - a) > cap) return JW_PLAN_CPU;
    memcpy(bytes + nbytes, data + S->L.entropy + a, e - a);
    shift = 8 * ((int64_t)nbytes - (int64_t)a);
    for (g = 0; g < groups; g++, sg += P_SEGW) {
      sg[3] = (int32_t)(sg[3] + shift);
      sg[4] = (int32_t)(sg[4] + shift);
    }
    nbytes += e - a;
  }
  rec[P_STATUS] = 1;
  rec[P_HEIGHT] = S->L.height;
  rec[P_WIDTH] = S->L.width;
  rec[P_NC] = S->ns;
  rec[P_HMAX] = hmax;
  rec[P_VMAX] = vmax;
  rec[P_Y] = y;
  rec[P_X] = x;
  rec[P_H] = h;
  rec[P_W] = w;
  rec[P_R0] = r0;
  rec[P_ROWS] = rows;
  rec[P_C0] = c0;
  rec[P_COLS] = c1 - c0 + 1;
  rec[P_NSEG] = nseg;
  rec[P_NBYTES] = (int32_t)nbytes;
  rec[P_BYTES_AT] = (int32_t)at;
  rec[P_XAL] = xal;
  rec[P_NB] = S->nb;
  rec[P_MCUW] = S->L.mcu_w;
  rec[P_MCUH] = S->L.mcu_h;
  rec[P_TOTAL] = (int32_t)((at + nbytes + 3) & ~(size_t)3);
  return rec[P_TOTAL];
}

/* The layout constants, for device/record.py to check that it reads what this file wrote. */
int jpeg_window_plan_layout(int32_t *out, int n) {
  const int32_t v[] = {P_TOTAL, P_COMP, P_COMPOF, P_QT, P_HUFF, P_HUFFW, P_SEGS, P_SEGW,
                       UP_FULL, UP_H2V1, UP_H2V2, UP_H1V2, UP_INT, JW_PLAN_CPU};
  int i;
  for (i = 0; i < n && i < (int)(sizeof(v) / sizeof(v[0])); i++) out[i] = v[i];
  return (int)(sizeof(v) / sizeof(v[0]));
}
