/* vit_speedrun/jpeg/scan.h: a baseline JPEG's single scan as window.c and plan.c read it
 * (layout, Huffman tables, MCU block order), and the window index stored after a train
 * JPEG's own bytes (its format: window.c, "Original bytes with a window index"). */
#ifndef JW_SCAN_H
#define JW_SCAN_H
#include <stddef.h>
#include <stdint.h>

#define JW_NOINDEX -4 /* jpeg_window_index: this file cannot be indexed (kept as it is) */
extern const uint8_t jw_magic[8];

struct jw_layout { size_t sof, entropy; int height, width, mcu_w, mcu_h, mcus_x, mcus_y; };
/* A DHT table as stored (bits[1..16]: codes per length; vals: the symbols). */
struct jw_table { uint8_t bits[17], vals[256]; int defined; };
/* A baseline file's single interleaved scan: its layout, restart interval, MCU block order
 * (comp_of[b]: the scan component of block b; first[c]: the first block of component c)
 * and each scan component's Huffman tables. */
struct jw_scan {
  struct jw_layout L;
  size_t sos;
  int dri, ns, nb, ss, se, ahal, comp_of[10], first[4], td[4], ta[4];
  struct jw_table tables[2][4];
};

#define JW_LOOK 9 /* bits decoded by one table lookup, as libjpeg's HUFF_LOOKAHEAD (8) */
struct jw_huff { int32_t maxcode[17], mincode[17], valptr[17]; uint16_t code[256],
                 look[1 << JW_LOOK]; uint8_t size[256], vals[256]; };

int jw_parse(const uint8_t *d, size_t n, struct jw_scan *S);
void jw_rows(const struct jw_layout *L, int y, int h, int *r0, int *r1);
int jw_huff_make(const struct jw_table *t, struct jw_huff *h, int look);
int jw_huffs(const struct jw_scan *S, struct jw_huff *dc, struct jw_huff *ac, int look);
int jw_fillers(const struct jw_huff *ac, uint8_t plan[8][8]);
int jw_mcu(const struct jw_scan *S, const struct jw_huff *dc, const struct jw_huff *ac,
           const uint8_t *u, size_t *bit, size_t limit, int *diff);
int jw_category(int v);
uint32_t jw_fnv(const uint8_t *p, size_t n);
void jw_put_le32(uint8_t *p, uint32_t v);
uint8_t *jw_put_var(uint8_t *o, uint64_t v);
int jw_get_var(const uint8_t **p, const uint8_t *end, uint64_t *v);
uint64_t jw_zig(int64_t v);
int64_t jw_unzig(uint64_t v);
size_t jw_index_of(const uint8_t *d, size_t n, const uint8_t **body, size_t *blen);
uint32_t jw_le32(const uint8_t *p);

/* A window (y, x, h, w) of an indexed file as the index cuts it (jw_index_window): MCU rows
 * r0..r1, each from group g0's first MCU column c0 to group g1's last, c1; and the index's
 * points (bit position into the entropy data, DC predictors) at the start of each of the
 * groups g0..g1 of each of those rows and at the end of its last one. */
struct jw_iwin {
  struct jw_scan S;
  struct jw_huff dc[4], ac[4];
  uint8_t plan[8][8]; /* jw_fillers' of the first component's AC table */
  int group, ng, r0, r1, g0, g1, c0, c1, rows, groups;
  int sub_w;      /* the smaller image's width: columns c0..c1 and the lead MCU before them */
  size_t *pos;    /* [rows][groups + 1]; free with jw_iwin_free */
  int64_t *pred;  /* [rows][groups + 1][4] */
};
int jw_index_window(const uint8_t *data, size_t n0, const uint8_t *body, size_t blen, int y,
                    int x, int h, int w, struct jw_iwin *W);
void jw_iwin_free(struct jw_iwin *W);
int jw_iw_lead(const struct jw_iwin *W, const uint8_t *data, size_t n0, int rr, int val[4]);
/* point gi (0..groups) of row rr (0..rows - 1): its bit position and its predictors */
static inline size_t jw_iw_pos(const struct jw_iwin *W, int rr, int gi) {
  return W->pos[(size_t)rr * (W->groups + 1) + gi];
}
static inline const int64_t *jw_iw_pred(const struct jw_iwin *W, int rr, int gi) {
  return W->pred + 4 * ((size_t)rr * (W->groups + 1) + gi);
}

#endif
