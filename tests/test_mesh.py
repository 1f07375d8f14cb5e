"""The mesh and its shardings on 2 CPU devices: the batch split over them,
parameters whole on each. A subprocess, since the device count is fixed
when JAX starts."""

import subprocess
import sys
import textwrap
from conftest import ROOT, subprocess_env


_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from capsnet_jax.training import mesh as mesh_lib
    assert jax.device_count() == 2, jax.devices()
    mesh = mesh_lib.make_mesh()
    assert dict(mesh.shape) == {"data": 2}, mesh.shape
    assert list(mesh.devices) == jax.devices()

    # A process's batch becomes one global array, half on each device.
    local = {"image": np.arange(4 * 3, dtype=np.uint8).reshape(4, 3),
             "label": np.array([7, 8, 9, 10], np.int32)}
    batch = mesh_lib.global_batch(local, mesh_lib.batch_sharded(mesh))
    for key, value in local.items():
      array = batch[key]
      assert array.shape == value.shape and array.dtype == value.dtype
      np.testing.assert_array_equal(np.asarray(array), value)
      shards = sorted(array.addressable_shards, key=lambda s: s.device.id)
      for device, shard in enumerate(shards):
        np.testing.assert_array_equal(np.asarray(shard.data),
                                      value[2 * device:2 * device + 2])

    # Replicated: every device holds the whole array.
    params = jax.device_put(np.arange(6.0).reshape(2, 3),
                            mesh_lib.replicated(mesh))
    assert len(params.addressable_shards) == 2
    for shard in params.addressable_shards:
      np.testing.assert_array_equal(np.asarray(shard.data),
                                    np.arange(6.0).reshape(2, 3))

    # An input every process holds whole, split like a batch.
    whole = np.arange(8.0).reshape(4, 2)
    array = mesh_lib.shard_replicated_input(whole,
                                            mesh_lib.batch_sharded(mesh))
    shards = sorted(array.addressable_shards, key=lambda s: s.device.id)
    np.testing.assert_array_equal(np.asarray(shards[1].data), whole[2:])
    np.testing.assert_array_equal(np.asarray(array), whole)

    # A step jitted over the mesh: per-example work stays split, the sum is
    # all-reduced into a replicated result.
    f = jax.jit(lambda x: (x * 2, x.sum()),
                in_shardings=mesh_lib.batch_sharded(mesh),
                out_shardings=(mesh_lib.batch_sharded(mesh),
                               mesh_lib.replicated(mesh)))
    doubled, total = f(array)
    assert doubled.sharding == mesh_lib.batch_sharded(mesh)
    assert total.sharding.is_fully_replicated and float(total) == 28.0
    print("OK")
""")


def test_mesh_shardings_on_two_devices():
  env = subprocess_env(devices=2)
  result = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("OK")
