# zoo: make (build), make test, make run, make test-asan, make test-gpu, make bench, make clean
#
# Everything builds into build/ and bin/. libyaml and libgomp are linked statically
# and the CUDA libraries are opened at run time (dlopen), so bin/zoorun runs on
# machines with or without a GPU, and on the GPU machine without libyaml installed.

CC        ?= gcc
CUDA_HOME ?= /usr/local/cuda
BUILD     ?= build
BIN       ?= bin
OPT       ?= -O2
SAN       ?=

CFLAGS  = -std=c11 $(OPT) -g -Wall -Wextra -Wno-unused-parameter -Wshadow -fopenmp \
          -D_GNU_SOURCE -Icompiler -Iruntime -I$(BUILD)/grammar -I$(CUDA_HOME)/include $(SAN)
LDFLAGS = -fopenmp $(SAN)
LDLIBS  = -Wl,-Bstatic -lyaml -lgomp -Wl,-Bdynamic -ldl -lm -lpthread

GRAMMAR_C = $(BUILD)/grammar/zoo.tab.c $(BUILD)/grammar/zoo.lex.c
MAINS     = compiler/zooc.c runtime/zoorun.c
LIB_SRC   = $(filter-out $(MAINS),$(wildcard compiler/*.c runtime/*.c))
LIB_OBJ   = $(LIB_SRC:%.c=$(BUILD)/%.o) $(GRAMMAR_C:.c=.o)

# ---- begin: hand-written CUDA kernels embedded as C strings (runtime/kernels/) ----
# Every runtime/kernels/*.cu, and runtime/rng.h which they use, becomes a string
# in $(BUILD)/kernels_src.c; zoo_kernel_source("poly_attention.cu") returns it.
# compiler/codegen_intrinsics.c pastes them into the generated modules.
KERNEL_SRC = $(sort $(wildcard runtime/kernels/*.cu)) runtime/rng.h
LIB_OBJ   += $(BUILD)/kernels_src.o

$(BUILD)/kernels_src.c: $(KERNEL_SRC) runtime/kernels/embed.sh
	@mkdir -p $(BUILD)
	sh runtime/kernels/embed.sh $(KERNEL_SRC) > $@.tmp && mv $@.tmp $@

$(BUILD)/kernels_src.o: $(BUILD)/kernels_src.c
	$(CC) $(CFLAGS) -c $< -o $@
# ---- end: hand-written CUDA kernels ----

TEST_SRC  = $(wildcard tests/*.c)
TEST_OBJ  = $(TEST_SRC:%.c=$(BUILD)/%.o)
HEADERS   = $(wildcard compiler/*.h compiler/*.def runtime/*.h tests/*.h) $(BUILD)/grammar/zoo.tab.h

.DEFAULT_GOAL := all

.PHONY: all test test-asan test-emu test-gpu run run-tiny bench clean generated check-generated

all: $(BIN)/zooc $(BIN)/zoorun $(BUILD)/zoo_test

$(BUILD)/grammar/zoo.tab.c $(BUILD)/grammar/zoo.tab.h: grammar/zoo.y
	@mkdir -p $(BUILD)/grammar
	bison -Wall -Werror -Wcounterexamples --defines=$(BUILD)/grammar/zoo.tab.h -o $(BUILD)/grammar/zoo.tab.c $<

$(BUILD)/grammar/zoo.lex.c $(BUILD)/grammar/zoo.lex.h: grammar/zoo.l $(BUILD)/grammar/zoo.tab.h
	@mkdir -p $(BUILD)/grammar
	flex --header-file=$(BUILD)/grammar/zoo.lex.h -o $(BUILD)/grammar/zoo.lex.c $<

$(BUILD)/grammar/%.o: $(BUILD)/grammar/%.c $(BUILD)/grammar/zoo.lex.h $(HEADERS)
	$(CC) $(CFLAGS) -Wno-sign-compare -Wno-unused-function -Wno-shadow -c $< -o $@

$(BUILD)/%.o: %.c $(HEADERS) $(BUILD)/grammar/zoo.lex.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libzoo.a: $(LIB_OBJ)
	rm -f $@
	ar rcs $@ $^

$(BIN)/zooc: $(BUILD)/compiler/zooc.o $(BUILD)/libzoo.a
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/zoorun: $(BUILD)/runtime/zoorun.o $(BUILD)/libzoo.a
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/zoo_test: $(TEST_OBJ) $(BUILD)/libzoo.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The whole suite on the CPU (NVRTC compilation included when the toolkit is here).
test: all
	$(BUILD)/zoo_test

# The front end under AddressSanitizer and UndefinedBehaviorSanitizer.
test-asan:
	$(MAKE) BUILD=build-asan BIN=build-asan/bin OPT=-O1 \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	  build-asan/zoo_test
	ASAN_OPTIONS=detect_leaks=0 build-asan/zoo_test lex parse fuzz error golden

# The CUDA backend itself (runtime/cuda.c over a fake driver, kernels emulated on
# the CPU): slow, so not part of make test.
test-emu: all
	ZOO_EMU_TESTS=1 $(BUILD)/zoo_test emu_

# On a machine with an NVIDIA GPU.
test-gpu: all
	ZOO_GPU_TESTS=1 $(BUILD)/zoo_test gpu

run: all
	$(BIN)/zoorun --config configs/simple_mqar.yaml --device auto

# A tiny MQAR run on the CPU that passes 0.99 accuracy in seconds.
run-tiny: all
	$(BIN)/zoorun --config configs/tiny_mqar.yaml --device cpu

bench: all
	$(BIN)/zoorun bench --device cuda

# Rewrites generated/ for the shipped models (zooc -o).
generated: $(BIN)/zooc
	for m in rebased based conv_attention attention rwkv; do \
	  $(BIN)/zooc models/$$m.zoo -o generated/$$m || exit 1; done

clean:
	rm -rf build build-asan bin
