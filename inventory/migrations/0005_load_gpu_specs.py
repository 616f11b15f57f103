"""Load the GPU spec table shipped in inventory/data/gpu_specs.csv (later updates: load_gpu_specs)."""

from django.db import migrations


def load(apps, schema_editor):
    from inventory.specs import load_spec_rows, read_spec_csv

    load_spec_rows(apps.get_model("inventory", "GpuSpec"), read_spec_csv())


def unload(apps, schema_editor):
    apps.get_model("inventory", "GpuSpec").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("inventory", "0004_gpuspec")]

    operations = [migrations.RunPython(load, unload)]
