/* The SPDK API surface the engine's spdk backend binds to. */
#include <spdk/env.h>
#include <spdk/nvme.h>
