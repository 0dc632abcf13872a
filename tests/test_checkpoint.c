/* test_checkpoint.c: safetensors round trips, and damaged files refused with a
 * message that names the file and the problem. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../runtime/checkpoint.h"
#include "test.h"

static const char *ck_path(const char *name) {
  static char buf[256];
  snprintf(buf, sizeof buf, "/tmp/zoo_test_ckpt_%d_%s", (int)getpid(), name);
  return buf;
}

static int ck_write_bytes(const char *path, const char *bytes, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  fwrite(bytes, 1, n, f);
  fclose(f);
  return 0;
}

/* A file with a hand-written header (8-byte length, JSON) and n data bytes. */
static void ck_write_raw(const char *path, const char *json, size_t data_bytes) {
  size_t hl = strlen(json), total = 8 + hl + data_bytes;
  char *buf = calloc(1, total);
  for (int k = 0; k < 8; k++) buf[k] = (char)((uint64_t)hl >> (8 * k));
  memcpy(buf + 8, json, hl);
  ck_write_bytes(path, buf, total);
  free(buf);
}

TEST(checkpoint_round_trip) {
  float a[6] = {1, 2, 3, 4, 5, 6}, b[1] = {-0.5f}, c[2] = {1e-30f, 3.0e38f};
  zoo_ckpt_tensor ts[] = {
      {"backbone.layers.0.w", 2, {2, 3}, 6, a},
      {"scalar", 0, {0}, 1, b},
      {"odd \"name\"\\", 1, {2}, 2, c},
  };
  zoo_ckpt_meta meta[] = {{"format", "zoo"}, {"version", "1"}, {"epoch", "3"}};
  char err[512];
  const char *path = ck_path("rt.safetensors");
  CHECKF(zoo_ckpt_save(path, ts, 3, meta, 3, err, sizeof err) == 0, "%s", err);
  char tmp[300];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  CHECK(access(tmp, F_OK) != 0); /* renamed away */
  /* the header's length is a multiple of 8 and the file is exactly header + data */
  size_t len;
  char *bytes = zoo_test_read(path, &len);
  uint64_t hl = 0;
  for (int k = 0; k < 8; k++) hl |= (uint64_t)(unsigned char)bytes[k] << (8 * k);
  CHECK(hl % 8 == 0 && len == 8 + hl + 4 * 9);
  CHECK(bytes[8] == '{');
  free(bytes);

  zoo_ckpt ck;
  CHECKF(zoo_ckpt_load(path, &ck, err, sizeof err) == 0, "%s", err);
  CHECK(ck.ntensors == 3 && ck.nmeta == 3);
  CHECK(!strcmp(zoo_ckpt_meta_get(&ck, "epoch"), "3") && zoo_ckpt_meta_get(&ck, "x") == NULL);
  const zoo_ckpt_tensor *ta = zoo_ckpt_find(&ck, "backbone.layers.0.w");
  CHECK(ta && ta->ndim == 2 && ta->shape[0] == 2 && ta->shape[1] == 3);
  CHECK(memcmp(ta->data, a, sizeof a) == 0);
  const zoo_ckpt_tensor *tb = zoo_ckpt_find(&ck, "scalar");
  CHECK(tb && tb->ndim == 0 && tb->numel == 1 && tb->data[0] == -0.5f);
  const zoo_ckpt_tensor *tc = zoo_ckpt_find(&ck, "odd \"name\"\\");
  CHECK(tc && memcmp(tc->data, c, sizeof c) == 0);
  zoo_ckpt_free(&ck);
  unlink(path);
}

/* A graph's parameters, their aliases and the optimiser state. */
TEST(checkpoint_model_round_trip) {
  zoo_graph g;
  zoo_graph_init(&g);
  zoo_type tw = {ZOO_F32, 2, {{16, 0}, {4, 0}}}, tb = {ZOO_F32, 1, {{4, 0}}};
  zoo_graph_param(&g, "emb.weight", tw, (zoo_init){.kind = ZOO_INIT_NORMAL, .a = 0.02});
  zoo_graph_param(&g, "ln.bias", tb, (zoo_init){.kind = ZOO_INIT_ZEROS});
  zoo_alias alias = {"lm_head.weight", g.params[0]};
  float p0[64], p1[4], m0[64], m1[4], v0[64], v1[4];
  for (int i = 0; i < 64; i++) p0[i] = (float)i, m0[i] = (float)-i, v0[i] = (float)(i * i);
  for (int i = 0; i < 4; i++) p1[i] = 0.5f * (float)i, m1[i] = 1, v1[i] = 2;
  float *params[] = {p0, p1}, *m[] = {m0, m1}, *v[] = {v0, v1};
  zoo_ckpt_state s = {params, m, v};
  zoo_ckpt_meta meta[] = {{"format", "zoo"}, {"version", "1"}, {"step", "12"}};
  char err[512];
  const char *path = ck_path("model.safetensors");
  CHECKF(zoo_ckpt_save_model(path, &g, &alias, 1, &s, meta, 3, err, sizeof err) == 0, "%s", err);

  zoo_ckpt ck;
  CHECKF(zoo_ckpt_load(path, &ck, err, sizeof err) == 0, "%s", err);
  CHECK(ck.ntensors == 2 + 1 + 4);
  CHECK(zoo_ckpt_find(&ck, "lm_head.weight") && zoo_ckpt_find(&ck, "optim.v.ln.bias"));
  float q0[64], q1[4], n0[64], n1[4], w0[64], w1[4];
  float *qp[] = {q0, q1}, *nm[] = {n0, n1}, *wv[] = {w0, w1};
  zoo_ckpt_state back = {qp, nm, wv};
  CHECKF(zoo_ckpt_restore_model(&ck, path, &g, &alias, 1, &back, err, sizeof err) == 0, "%s", err);
  CHECK(!memcmp(q0, p0, sizeof p0) && !memcmp(q1, p1, sizeof p1));
  CHECK(!memcmp(n0, m0, sizeof m0) && !memcmp(w1, v1, sizeof v1));
  zoo_ckpt_free(&ck);

  /* the same file against a model whose shapes differ, or that lacks a tensor */
  zoo_graph g2;
  zoo_graph_init(&g2);
  zoo_type tw2 = {ZOO_F32, 2, {{16, 0}, {8, 0}}};
  zoo_graph_param(&g2, "emb.weight", tw2, (zoo_init){.kind = ZOO_INIT_NORMAL, .a = 0.02});
  zoo_graph_param(&g2, "ln.bias", tb, (zoo_init){.kind = ZOO_INIT_ZEROS});
  CHECK(zoo_ckpt_load(path, &ck, err, sizeof err) == 0);
  float big[128];
  float *qp2[] = {big, q1};
  zoo_ckpt_state s2 = {qp2, NULL, NULL};
  CHECK(zoo_ckpt_restore_model(&ck, path, &g2, NULL, 0, &s2, err, sizeof err) == -1);
  CHECKF(strstr(err, "tensor 'emb.weight' has shape [16, 4] but the model's is [16, 8]"), "%s", err);
  zoo_graph_param(&g, "extra", tb, (zoo_init){.kind = ZOO_INIT_ZEROS});
  float e[4];
  float *qp3[] = {q0, q1, e};
  zoo_ckpt_state s3 = {qp3, NULL, NULL};
  CHECK(zoo_ckpt_restore_model(&ck, path, &g, &alias, 1, &s3, err, sizeof err) == -1);
  CHECKF(strstr(err, "has no tensor 'extra' that the model needs"), "%s", err);
  zoo_ckpt_free(&ck);
  zoo_graph_free(&g);
  zoo_graph_free(&g2);
  unlink(path);
}

/* Damaged files: each refused, naming the file and what is wrong. */
TEST(checkpoint_corrupt_files) {
  char err[512];
  zoo_ckpt ck;
  const char *path = ck_path("bad.safetensors");
  struct {
    const char *json;
    size_t data;
    const char *want;
  } cases[] = {
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8,
       "corrupt header: expected ',' or '}'"},
      {"{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
       "tensor 'a' has dtype F16; zoo reads F32 only"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
       "tensor 'a' spans 8 bytes but its shape needs 12"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
       "truncated: tensor 'a' ends at byte 16 of the data but the file holds 8"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
       12, "tensors 'a' and 'b' overlap"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
       "tensor 'a' has a bad shape"},
      {"{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
       "tensor 'a' lacks dtype, shape or data_offsets"},
      {"[1, 2]", 0, "corrupt header: not an object"},
      {"{\"__metadata__\":{\"epoch\":3}}", 0, "metadata 'epoch' is not a string"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    ck_write_raw(path, cases[i].json, cases[i].data);
    CHECKF(zoo_ckpt_load(path, &ck, err, sizeof err) == -1, "case %zu loaded", i);
    CHECKF(strstr(err, path) == err && strstr(err, cases[i].want), "case %zu: %s", i, err);
  }
  /* a header length beyond the file, and a file too short for the length */
  ck_write_bytes(path, "\xff\x00\x00\x00\x00\x00\x00\x00{}", 10);
  CHECK(zoo_ckpt_load(path, &ck, err, sizeof err) == -1);
  CHECKF(strstr(err, "the header claims 255 bytes but the file has 2"), "%s", err);
  ck_write_bytes(path, "\x02\x00\x00", 3);
  CHECK(zoo_ckpt_load(path, &ck, err, sizeof err) == -1);
  CHECKF(strstr(err, "truncated: 3 bytes"), "%s", err);
  CHECK(zoo_ckpt_load("/nonexistent/x.safetensors", &ck, err, sizeof err) == -1);
  CHECKF(strstr(err, "/nonexistent/x.safetensors: cannot open"), "%s", err);
  unlink(path);
}

/* A good file cut short at every length is refused, never read past its end. */
TEST(checkpoint_truncated_everywhere) {
  float a[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  zoo_ckpt_tensor ts[] = {{"w", 1, {8}, 8, a}, {"b", 1, {2}, 2, a}};
  zoo_ckpt_meta meta[] = {{"format", "zoo"}};
  char err[512];
  const char *path = ck_path("cut.safetensors");
  CHECK(zoo_ckpt_save(path, ts, 2, meta, 1, err, sizeof err) == 0);
  size_t len;
  char *bytes = zoo_test_read(path, &len);
  for (size_t cut = 0; cut < len; cut++) {
    ck_write_bytes(path, bytes, cut);
    zoo_ckpt ck;
    CHECKF(zoo_ckpt_load(path, &ck, err, sizeof err) == -1, "cut at %zu of %zu loaded", cut, len);
    CHECKF(strstr(err, "truncated") || strstr(err, "corrupt"), "cut at %zu: %s", cut, err);
  }
  free(bytes);
  unlink(path);
}
