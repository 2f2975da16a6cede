"""Write the two small CSV datasets the README walkthrough uses.

    python examples/make_sample_data.py [DIR]    (default: .mlops/samples)

house-prices.csv: 8 numeric features and a numeric `price` (tabular_regression, matches the seed's
8-feature predict body). flowers.csv: a string `species` label first, then 4 measurements
(tabular_classification, with "targetColumn": "species").
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".mlops/samples")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 6, size=(1000, 8))
    houses = pd.DataFrame(x, columns=[f"feature_{i}" for i in range(1, 9)])
    houses["price"] = x @ np.array([3.0, 1.5, -2.0, 0.5, 1.0, 2.5, -1.0, 0.8]) + 10 + rng.normal(0, 0.5, 1000)
    houses.to_csv(out / "house-prices.csv", index=False)

    m = rng.normal(size=(600, 4))
    species = np.where(m[:, 0] > 0.5, "setosa", np.where(m[:, 1] > 0, "versicolor", "virginica"))
    flowers = pd.DataFrame({"species": species, **{f"m{i}": m[:, i] for i in range(4)}})
    flowers.to_csv(out / "flowers.csv", index=False)
    print(f"wrote {out / 'house-prices.csv'} and {out / 'flowers.csv'}")


if __name__ == "__main__":
    main()
