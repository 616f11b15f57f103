from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("inventory", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="providerfeed",
            name="search_pages",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.CreateModel(
            name="ProviderRateLimit",
            fields=[
                ("key", models.CharField(max_length=160, primary_key=True, serialize=False)),
                ("next_at", models.FloatField(default=0.0)),
                ("backoff", models.FloatField(default=0.0)),
                ("hold_until", models.FloatField(default=0.0)),
                ("version", models.PositiveBigIntegerField(default=0)),
            ],
        ),
    ]
