#!/usr/bin/env python3
"""The Python half of `cargo bench --bench spark` (benches/spark.rs drives it).

Subcommands:

  check                 exit 0 if pyarrow, pyspark and java are usable, else print what is
                        missing and how to install it, exit 2
  generate OUT BYTES    write a wide Parquet dataset of about BYTES bytes into the directory OUT
                        (24 columns of mixed types, row groups of 40,000 rows, 4 row groups per
                        file) and print its description: sizes, files, and the bytes of the
                        query's 3 columns' chunks (from the Parquet footers)
  query DIR             run the query with PySpark (local[2]) on file://DIR and print the
                        query's answer and its wall time (session start, query)

Output is one `name value` line per field (benches/spark.rs parses it).

The query reads 3 of the 24 columns (`QUERY_COLUMNS`): a filter on one, then a count, the sum of
the other two's hashes (a float64 column) and values (an int32 column). Each `query` is a new Python process, hence a new JVM and SparkSession: nothing of
Spark's (file listing cache, cached plans or data) survives from one run to the next, so every
run reads the files again.

Data is random (seeded), so the column chunks neither compress nor are skipped by min/max
statistics: the query must read every row group's 3 chunks.
"""

import os
import shutil
import subprocess
import sys
import time

ROWS_PER_GROUP = 40_000
GROUPS_PER_FILE = 4
# The query's columns: an int64 filtered on, a float64 (its hashes summed) and an int32 summed.
QUERY_COLUMNS = ["i64_03", "f64_02", "i32_01"]
INSTALL = "pip install pyspark pyarrow   (and Java 17: apt-get install openjdk-17-jre-headless)"


def fail(msg, code=2):
    print(f"spark_bench.py: {msg}", file=sys.stderr)
    sys.exit(code)


def emit(fields):
    """Output for benches/spark.rs: one `name value` line per field."""
    for k, v in fields.items():
        print(f"{k} {v}")


def check():
    missing = []
    for mod in ("pyarrow", "pyspark"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(f"the Python module {mod}")
    java = shutil.which("java")
    if os.environ.get("JAVA_HOME"):
        java = os.path.join(os.environ["JAVA_HOME"], "bin", "java")
    if not java or not os.access(java, os.X_OK):
        missing.append("java (Java 17+) on PATH or in JAVA_HOME")
    else:
        try:
            out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                missing.append(f"a working java ({java} -version exited {out.returncode})")
        except (OSError, subprocess.TimeoutExpired) as e:
            missing.append(f"a working java ({java}: {e})")
    if missing:
        fail("missing " + ", ".join(missing) + f"; install with: {INSTALL}")
    import pyspark

    emit({"pyspark": pyspark.__version__, "java": java})


def schema_and_columns(pa, pc, n, seed):
    """24 columns: 7 int64, 4 int32, 6 float64, 2 float32, 2 timestamps, 1 date, 2 strings."""

    def uniform(k):
        # pc.random has no seed argument before pyarrow 16; initializer covers both.
        return pc.random(n, initializer=seed * 1000 + k)

    def to(arr, typ):
        # Truncating doubles to integers is the point: no safe-cast check.
        return pc.cast(arr, typ, safe=False)

    cols = {}
    k = 0
    for i in range(7):
        k += 1
        cols[f"i64_{i:02}"] = to(pc.multiply(uniform(k), 1e18), pa.int64())
    for i in range(4):
        k += 1
        cols[f"i32_{i:02}"] = to(pc.subtract(pc.multiply(uniform(k), 4e9), 2e9), pa.int32())
    for i in range(6):
        k += 1
        cols[f"f64_{i:02}"] = pc.multiply(uniform(k), 1000.0)
    for i in range(2):
        k += 1
        cols[f"f32_{i:02}"] = pc.cast(uniform(k), pa.float32())
    for i in range(2):
        k += 1
        us = to(pc.add(pc.multiply(uniform(k), 3e14), 1.5e15), pa.int64())
        cols[f"ts_{i:02}"] = pc.cast(us, pa.timestamp("us", tz="UTC"))
    k += 1
    days = to(pc.add(pc.multiply(uniform(k), 10000.0), 10000.0), pa.int32())
    cols["date_00"] = pc.cast(days, pa.date32())
    for i in range(2):
        k += 1
        num = to(pc.multiply(uniform(k), 1e8), pa.int64())
        cols[f"str_{i:02}"] = pc.cast(num, pa.string())
    assert len(cols) == 24, len(cols)
    return pa.table(cols)


def generate(out, target_bytes):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    os.makedirs(out, exist_ok=True)
    files = []
    total = 0
    seed = 1
    rows = ROWS_PER_GROUP * GROUPS_PER_FILE
    while total < target_bytes:
        path = os.path.join(out, f"part-{len(files):05}.parquet")
        table = schema_and_columns(pa, pc, rows, seed)
        seed += 1
        # Random values: dictionary encoding would only add a page that never pays off.
        pq.write_table(
            table,
            path,
            row_group_size=ROWS_PER_GROUP,
            compression="snappy",
            use_dictionary=False,
            write_statistics=True,
        )
        size = os.path.getsize(path)
        total += size
        files.append(describe(pq, path, size))
    chunk_sizes = sorted(c for f in files for c in f["chunk_sizes"])
    emit(
        {
            "bytes": total,
            "files": len(files),
            "row_groups": sum(f["row_groups"] for f in files),
            "rows": sum(f["rows"] for f in files),
            "columns": 24,
            "query_columns": ",".join(QUERY_COLUMNS),
            "query_chunk_bytes": sum(f["query_chunk_bytes"] for f in files),
            "footer_bytes": sum(f["footer_bytes"] for f in files),
            "chunk_min": chunk_sizes[0],
            "chunk_median": chunk_sizes[len(chunk_sizes) // 2],
            "chunk_max": chunk_sizes[-1],
        }
    )
    for f in files:
        print(f"file {f['name']} {f['bytes']}")


def describe(pq, path, size):
    """Sizes from the footer: the query's column chunks, all chunks, and the footer itself."""
    md = pq.ParquetFile(path).metadata
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    wanted = [names.index(c) for c in QUERY_COLUMNS]
    query_bytes = 0
    chunk_sizes = []
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for c in range(md.num_columns):
            n = rg.column(c).total_compressed_size
            chunk_sizes.append(n)
            if c in wanted:
                query_bytes += n
    with open(path, "rb") as f:
        f.seek(size - 8)
        footer_len = int.from_bytes(f.read(4), "little")
    return {
        "name": os.path.basename(path),
        "bytes": size,
        "rows": md.num_rows,
        "row_groups": md.num_row_groups,
        "query_chunk_bytes": query_bytes,
        "footer_bytes": footer_len + 8,
        "chunk_sizes": chunk_sizes,
    }


def query(directory):
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    t0 = time.monotonic()
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("s3cachefs-spark-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    t1 = time.monotonic()
    a, b, c = QUERY_COLUMNS
    df = spark.read.parquet("file://" + os.path.abspath(directory))
    row = (
        df.where(F.col(a) > 500_000_000_000_000_000)
        # Integer sums, so the answer does not depend on the order Spark adds partial sums in
        # and can be compared exactly (a sum of doubles could differ in its last digits).
        .agg(F.count(F.lit(1)).alias("n"), F.sum(F.hash(b)).alias("sum_b"), F.sum(c).alias("sum_c"))
        .collect()[0]
    )
    t2 = time.monotonic()
    spark.stop()
    emit(
        {
            "rows": row["n"],
            "sum_b": row["sum_b"],
            "sum_c": row["sum_c"],
            "session_s": f"{t1 - t0:.3f}",
            "query_s": f"{t2 - t1:.3f}",
        }
    )


def main(argv):
    if len(argv) >= 1 and argv[0] == "check":
        check()
    elif len(argv) == 3 and argv[0] == "generate":
        try:
            target = int(argv[2])
        except ValueError:
            fail(f"BYTES must be an integer, got {argv[2]!r}")
        if target <= 0:
            fail("BYTES must be positive")
        generate(argv[1], target)
    elif len(argv) == 2 and argv[0] == "query":
        if not os.path.isdir(argv[1]):
            fail(f"{argv[1]} is not a directory")
        query(argv[1])
    else:
        fail("usage: spark_bench.py check | generate OUT BYTES | query DIR")


if __name__ == "__main__":
    main(sys.argv[1:])
