/* vit_speedrun/jpeg/scan.c: reading a baseline JPEG's single scan (markers, Huffman tables,
 * MCUs) and the window index's varints and footer; shared by window.c (the CPU decode) and
 * plan.c (what the device decoder is given). Everything here reads only inside its bounds. */
#include <stdlib.h>
#include <string.h>

#include "scan.h"

static int be16(const uint8_t *p) { return (p[0] << 8) | p[1]; }

/* 1 and the scan when data is a baseline (SOF0/SOF1) file whose first scan interleaves every
 * component, 0 otherwise (the plain path then decodes it). Reads only inside d[0, n). */
int jw_parse(const uint8_t *d, size_t n, struct jw_scan *S) {
  struct jw_layout *L = &S->L;
  size_t p = 2;
  int nf = 0, maxh = 1, maxv = 1, i, ids[4] = {0}, hv[4] = {0};
  if (n < 4 || d[0] != 0xFF || d[1] != 0xD8) return 0;
  L->sof = 0;
  S->dri = 0;
  for (i = 0; i < 8; i++) S->tables[i / 4][i % 4].defined = 0;
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
        if (hs < 1 || hs > 4 || vs < 1 || vs > 4 || (nf == 1 && (hs != 1 || vs != 1))) return 0;
        ids[i] = d[p + 10 + 3 * i];
        hv[i] = hs * vs;
        maxh = hs > maxh ? hs : maxh;
        maxv = vs > maxv ? vs : maxv;
      }
    } else if (m == 0xC4) {
      size_t q = p + 4, end = p + 2 + len;
      while (q < end) {
        int tc = d[q] >> 4, th = d[q] & 15, total = 0, k;
        struct jw_table *t;
        if (tc > 1 || th > 3 || q + 17 > end) return 0;
        t = &S->tables[tc][th];
        for (k = 1; k <= 16; k++) total += t->bits[k] = d[q + k];
        if (total > 256 || q + 17 + total > end) return 0;
        memcpy(t->vals, d + q + 17, (size_t)total);
        t->defined = 1;
        q += 17 + (size_t)total;
      }
    } else if (m >= 0xC2 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
      return 0; /* progressive, lossless or arithmetic-coded */
    } else if (m == 0xDD && len == 4) {
      S->dri = be16(d + p + 4);
    } else if (m == 0xDA) {
      if (len < 6 + 2 * nf || !L->sof || d[p + 4] != nf || L->height == 0 || L->width == 0)
        return 0;
      S->sos = p;
      L->entropy = p + 2 + len;
      L->mcu_w = 8 * maxh;
      L->mcu_h = 8 * maxv;
      L->mcus_x = (L->width + L->mcu_w - 1) / L->mcu_w;
      L->mcus_y = (L->height + L->mcu_h - 1) / L->mcu_h;
      S->ns = nf;
      S->nb = 0;
      for (i = 0; i < nf; i++) {
        int cs = d[p + 5 + 2 * i], td = d[p + 6 + 2 * i] >> 4, ta = d[p + 6 + 2 * i] & 15, c, b;
        for (c = 0; c < nf && ids[c] != cs; c++) {}
        if (c == nf || td > 3 || ta > 3) return 0;
        S->td[i] = td;
        S->ta[i] = ta;
        S->first[i] = S->nb;
        for (b = 0; b < (nf > 1 ? hv[c] : 1); b++) {
          if (S->nb == 10) return 0;
          S->comp_of[S->nb++] = i;
        }
      }
      S->ss = d[p + 5 + 2 * nf];
      S->se = d[p + 6 + 2 * nf];
      S->ahal = d[p + 7 + 2 * nf];
      return 1;
    }
    p += 2 + len;
  }
  return 0;
}

/* The MCU rows [*r0, *r1] a smaller image needs to decode window rows [y, y + h) as the
 * whole file does: the window's own, plus the row above (below) where vertically
 * subsampled chroma (16-row MCUs) makes the fancy upsampler read a chroma row across the
 * MCU boundary: for the window's first (last) row when it is an MCU's first (last). Other
 * rows find their neighbours inside their MCU. */
void jw_rows(const struct jw_layout *L, int y, int h, int *r0, int *r1) {
  *r0 = y / L->mcu_h;
  *r1 = (y + h - 1) / L->mcu_h;
  if (L->mcu_h > 8 && y % L->mcu_h == 0 && *r0 > 0) (*r0)--;
  if (L->mcu_h > 8 && (y + h) % L->mcu_h == 0 && *r1 < L->mcus_y - 1) (*r1)++;
}

const uint8_t jw_magic[8] = {'J', 'W', 'I', 'N', 'D', 'E', 'X', '1'};

/* libjpeg's canonical codes (jpeg_make_d_derived_tbl), for decoding and encoding. */
int jw_huff_make(const struct jw_table *t, struct jw_huff *h, int look) {
  int l, i, k = 0;
  int32_t code = 0;
  if (!t->defined) return 0;
  memset(h->size, 0, sizeof(h->size));
  for (l = 1; l <= 16; l++) {
    h->valptr[l] = k;
    h->mincode[l] = code;
    for (i = 0; i < t->bits[l]; i++, k++, code++) {
      h->vals[k] = t->vals[k];
      if (!h->size[t->vals[k]]) { /* a repeated symbol keeps its first code */
        h->code[t->vals[k]] = (uint16_t)code;
        h->size[t->vals[k]] = (uint8_t)l;
      }
    }
    h->maxcode[l] = t->bits[l] ? code - 1 : -1;
    if (t->bits[l] && code >= (1 << l)) return 0; /* libjpeg: JERR_BAD_HUFF_TABLE */
    code <<= 1;
  }
  if (!look) return 1;
  memset(h->look, 0, sizeof(h->look)); /* 0: the code is longer than JW_LOOK bits */
  for (l = 1, k = 0; l <= JW_LOOK; l++)
    for (i = 0; i < t->bits[l]; i++, k++) {
      int c = (h->mincode[l] + i) << (JW_LOOK - l), j;
      for (j = 0; j < 1 << (JW_LOOK - l); j++) h->look[c + j] = (uint16_t)(l << 8 | t->vals[k]);
    }
  return 1;
}

/* The scan's tables, by id (dc[S->td[c]] is component c's), each built once; look: with
 * the decoding lookahead. */
int jw_huffs(const struct jw_scan *S, struct jw_huff *dc, struct jw_huff *ac, int look) {
  int i, built[2][4] = {{0}};
  if (S->ss != 0 || S->se != 63 || S->ahal != 0) return 0;
  for (i = 0; i < S->ns; i++) {
    if (!built[0][S->td[i]] && !jw_huff_make(&S->tables[0][S->td[i]], &dc[S->td[i]], look))
      return 0;
    if (!built[1][S->ta[i]] && !jw_huff_make(&S->tables[1][S->ta[i]], &ac[S->ta[i]], look))
      return 0;
    built[0][S->td[i]] = built[1][S->ta[i]] = 1;
  }
  return 1;
}

/* Fillers that lengthen a block by d bits modulo 8 (d = 0..7): plan[d] lists AC symbols
 * (run 0, size s: s magnitude bits follow), at most 7, that the lead MCU's first block
 * can carry before its EOB. 0 if some d cannot be reached with this table. */
int jw_fillers(const struct jw_huff *ac, uint8_t plan[8][8]) {
  int reached[8] = {1, 0, 0, 0, 0, 0, 0, 0}, step, d, s;
  plan[0][0] = 0;
  for (step = 1; step <= 7; step++)
    for (d = 0; d < 8; d++)
      if (reached[d] == step)
        for (s = 1; s <= 10; s++) {
          int e = (d + ac->size[s] + s) % 8;
          if (ac->size[s] && !reached[e]) {
            reached[e] = step + 1;
            memcpy(plan[e], plan[d], 8);
            plan[e][step - 1] = (uint8_t)s;
            plan[e][step] = 0;
          }
        }
  for (d = 0; d < 8; d++) if (!reached[d]) return 0;
  return 1;
}

/* k <= 25 bits of u from bit `bit` (u has 8 readable bytes past any bit we look at). */
static inline uint32_t jw_peek(const uint8_t *u, size_t bit, int k) {
  const uint8_t *p = u + (bit >> 3);
  uint32_t v = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
  return (v << (bit & 7)) >> (32 - k);
}

static inline int jw_huff_decode(const struct jw_huff *h, const uint8_t *u, size_t *bit) {
  uint32_t v = jw_peek(u, *bit, 16);
  int l, e = h->look[v >> (16 - JW_LOOK)];
  if (e) { *bit += (size_t)(e >> 8); return e & 255; }
  for (l = JW_LOOK + 1; l <= 16; l++) {
    int32_t c = (int32_t)(v >> (16 - l));
    if (c <= h->maxcode[l]) { *bit += l; return h->vals[h->valptr[l] + c - h->mincode[l]]; }
  }
  return -1;
}

/* Entropy-decode one MCU of unstuffed bits u from *bit, reading no further than `limit`:
 * each block's DC difference. 0 on a bad code. */
int jw_mcu(const struct jw_scan *S, const struct jw_huff *dc, const struct jw_huff *ac,
                  const uint8_t *u, size_t *bit, size_t limit, int *diff) {
  int b, k, s, r;
  for (b = 0; b < S->nb; b++) {
    const struct jw_huff *hac = &ac[S->ta[S->comp_of[b]]];
    if (*bit > limit) return 0;
    s = jw_huff_decode(&dc[S->td[S->comp_of[b]]], u, bit);
    if (s < 0 || s > 15 || *bit > limit) return 0;
    r = s ? (int)jw_peek(u, *bit, s) : 0;
    *bit += (size_t)s;
    diff[b] = s && r < (1 << (s - 1)) ? r - (1 << s) + 1 : r; /* HUFF_EXTEND */
    for (k = 1; k < 64; k++) {
      if (*bit > limit || (r = jw_huff_decode(hac, u, bit)) < 0) return 0;
      if (r & 15) { k += r >> 4; *bit += (size_t)(r & 15); }
      else if (r >> 4 != 15) break;
      else k += 15;
    }
  }
  return *bit <= limit;
}

int jw_category(int v) { /* JPEG's SSSS: the bits of |v| */
  int s = 0;
  for (v = v < 0 ? -v : v; v; v >>= 1) s++;
  return s;
}
uint32_t jw_fnv(const uint8_t *p, size_t n) {
  uint32_t h = 2166136261u;
  while (n--) h = (h ^ *p++) * 16777619u;
  return h;
}
uint32_t jw_le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
void jw_put_le32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
uint8_t *jw_put_var(uint8_t *o, uint64_t v) {
  while (v >= 128) { *o++ = (uint8_t)(v | 128); v >>= 7; }
  *o++ = (uint8_t)v;
  return o;
}
int jw_get_var(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  int shift;
  for (*v = 0, shift = 0; *p < end && shift < 64; shift += 7) {
    uint8_t b = *(*p)++;
    *v |= (uint64_t)(b & 127) << shift;
    if (b < 128) return 1;
  }
  return 0;
}
uint64_t jw_zig(int64_t v) {
  return v < 0 ? ((uint64_t)(-(v + 1)) << 1) | 1 : (uint64_t)v << 1;
}
int64_t jw_unzig(uint64_t v) { return v & 1 ? -(int64_t)(v >> 1) - 1 : (int64_t)(v >> 1); }

/* The length of the JPEG in front of a valid index (its body in *body, *blen), else 0. */
size_t jw_index_of(const uint8_t *d, size_t n, const uint8_t **body, size_t *blen) {
  size_t len;
  if (n < 16 + 4 || memcmp(d + n - 8, jw_magic, 8)) return 0;
  len = jw_le32(d + n - 16);
  if (len > n - 16 - 4) return 0;
  *body = d + n - 16 - len;
  *blen = len;
  return jw_fnv(*body, len) == jw_le32(d + n - 12) ? n - 16 - len : 0;
}

/* 1 and W (its points allocated: jw_iwin_free) when the window of this indexed file can be
 * cut at its index points and each of its rows copied after a lead MCU (jw_iw_lead), 0
 * otherwise: every check of window.c's index path and of plan.c, in one place, so that the
 * device plans exactly the windows the CPU's index path decodes. data[0, n0) is the JPEG,
 * body[0, blen) its index. */
int jw_index_window(const uint8_t *data, size_t n0, const uint8_t *body, size_t blen, int y,
                    int x, int h, int w, struct jw_iwin *W) {
  struct jw_scan *S = &W->S;
  const uint8_t *p = body, *end = body + blen;
  uint64_t v, group, npts, ns;
  int64_t pred[4] = {0};
  size_t pos = 0;
  int k, ci, rr, ng;
  W->pos = NULL;
  W->pred = NULL;
  if (!jw_parse(data, n0, S) || S->dri != 0 || !jw_huffs(S, W->dc, W->ac, 0) ||
      !jw_fillers(&W->ac[S->ta[0]], W->plan))
    return 0;
  for (ci = 0; ci < S->ns; ci++) if (!W->ac[S->ta[ci]].size[0]) return 0; /* no EOB */
  if (!jw_get_var(&p, end, &v) || v != 1 || !jw_get_var(&p, end, &group) || group < 1 ||
      group > 65535 || !jw_get_var(&p, end, &npts) || !jw_get_var(&p, end, &ns) ||
      ns != (uint64_t)S->ns)
    return 0;
  W->group = (int)group;
  W->ng = ng = (S->L.mcus_x + W->group - 1) / W->group;
  /* mcus_x >= 2: the original's chroma is wide enough for the fancy upsampler, as the
   * smaller image's always is (libjpeg picks it by width) */
  if (npts != (uint64_t)S->L.mcus_y * ng + 1 || S->L.mcus_x < 2 || h <= 0 || w <= 0 || y < 0 ||
      x < 0 || (long)y + h > S->L.height || (long)x + w > S->L.width)
    return 0;
  jw_rows(&S->L, y, h, &W->r0, &W->r1); /* as the restart path */
  W->g0 = x / S->L.mcu_w / W->group;
  W->g1 = (x + w - 1) / S->L.mcu_w / W->group;
  W->c0 = W->g0 * W->group;
  W->c1 = (W->g1 + 1) * W->group - 1;
  W->c1 = W->c1 >= S->L.mcus_x ? S->L.mcus_x - 1 : W->c1;
  if (W->r1 - W->r0 + 1 == S->L.mcus_y && W->c1 - W->c0 + 1 == S->L.mcus_x) return 0;
  /* the smaller image is one MCU wider than its columns (the lead MCU): a SOF holds it */
  W->sub_w = (W->c1 == S->L.mcus_x - 1 ? S->L.width - W->c0 * S->L.mcu_w
                                       : (W->c1 - W->c0 + 1) * S->L.mcu_w) + S->L.mcu_w;
  if (W->sub_w > 65535) return 0;
  W->rows = W->r1 - W->r0 + 1;
  W->groups = W->g1 - W->g0 + 1;
  W->pos = malloc((size_t)W->rows * (W->groups + 1) * (sizeof(size_t) + 4 * sizeof(int64_t)));
  if (!W->pos) return 0;
  W->pred = (int64_t *)(W->pos + (size_t)W->rows * (W->groups + 1));
  /* walk the points up to the last one needed: point (r, g) = r * ng + g starts group g of
   * row r and the next point ends it; (r, g1 + 1) may also be (r + 1, 0) */
  for (k = 0; k <= W->r1 * ng + W->g1 + 1; k++) {
    if (!jw_get_var(&p, end, &v)) goto fail;
    pos += v;
    for (ci = 0; ci < S->ns; ci++) {
      /* a change of more than 2 * 65535 (zigzag 4 * 65535) leaves the range below; refused
       * first, as the sum could overflow */
      if (!jw_get_var(&p, end, &v) || v > 4 * 65535) goto fail;
      pred[ci] += jw_unzig(v);
      if (pred[ci] > 65535 || pred[ci] < -65535) goto fail;
    }
    for (rr = (k - W->g0) / ng - 1 - W->r0; k >= W->g0 && rr <= (k - W->g0) / ng - W->r0; rr++) {
      int gi = k - W->g0 - (W->r0 + rr) * ng; /* rr: the row relative to r0 */
      size_t at = (size_t)rr * (W->groups + 1) + gi;
      if (rr < 0 || rr >= W->rows || gi < 0 || gi > W->groups) continue;
      W->pos[at] = pos;
      memcpy(W->pred + 4 * at, pred, sizeof(pred));
    }
  }
  for (rr = 0; rr < W->rows; rr++)
    if (!jw_iw_lead(W, data, n0, rr, (int[4]){0})) goto fail;
  return 1;
fail:
  jw_iwin_free(W);
  return 0;
}

/* Row rr of window W as jw_index_decode copies it, after its lead MCU: 1 and the lead's DC
 * differences in val (the predictors from where row rr - 1's segment ends to where row
 * rr's starts) when the row's segment lies inside the entropy data data[entropy, n0), starts
 * where row rr - 1's ends or later, and goes past the byte it shares with the lead, and
 * the DC tables can code val; 0 otherwise. */
int jw_iw_lead(const struct jw_iwin *W, const uint8_t *data, size_t n0, int rr, int val[4]) {
  const struct jw_scan *S = &W->S;
  size_t a = jw_iw_pos(W, rr, 0), e = jw_iw_pos(W, rr, W->groups), i = a >> 3;
  int ci, b, s;
  if ((e >> 3) <= (a >> 3) || e > 8 * (n0 - S->L.entropy) ||
      (rr && a < jw_iw_pos(W, rr - 1, W->groups)))
    return 0;
  for (ci = 0; ci < S->ns; ci++) {
    int64_t v64 = jw_iw_pred(W, rr, 0)[ci] - (rr ? jw_iw_pred(W, rr - 1, W->groups)[ci] : 0);
    if (v64 > 65535 || v64 < -65535) return 0;
    val[ci] = (int)v64;
  }
  for (b = 0; b < S->nb; b++) {
    s = b == S->first[S->comp_of[b]] ? jw_category(val[S->comp_of[b]]) : 0;
    if (s > 15 || !W->dc[S->td[S->comp_of[b]]].size[s]) return 0;
  }
  if (a & 7) i += data[S->L.entropy + i] == 0xFF ? 2 : 1; /* past the shared byte */
  return i <= (e >> 3);
}

void jw_iwin_free(struct jw_iwin *W) {
  free(W->pos);
  W->pos = NULL;
  W->pred = NULL;
}
