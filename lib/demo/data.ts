// The demo rows written on a first start with SEED_DATA=true. Shared by the product and order
// services on purpose: each demo order holds a stock reservation under the same id on the product
// side, so cancelling a demo order gives its stock back like any other order.

export const demoUsers = [
  { name: 'Alice Admin', email: 'alice@example.com', role: 'admin' },
  { name: 'Bob Smith', email: 'bob@example.com', role: 'user' },
  { name: 'Carol Jones', email: 'carol@example.com', role: 'user' },
] as const;

export const demoProducts = [
  { name: 'Laptop Pro 14', description: 'A 14-inch laptop with 32 GB of memory', price: 1299.99, stock: 25, category: 'electronics' },
  { name: 'Wireless Mouse', description: 'Quiet clicks, two-year battery', price: 29.99, stock: 150, category: 'electronics' },
  { name: 'Coffee Mug', description: 'Stoneware, 350 ml', price: 12.5, stock: 8, category: 'kitchen' },
  { name: 'Desk Lamp', description: 'LED, dimmable', price: 45, stock: 5, category: 'home' },
  { name: 'Notebook', description: 'A5, dotted, 120 pages', price: 4.99, stock: 400, category: 'office' },
] as const;

/** Product ids are 1..5 in the order above, user ids 1..3. */
export const demoOrders = [
  { reservationId: 'demo-order-1', userId: 1, status: 'delivered', items: [{ productId: 1, quantity: 1, unitPrice: 1299.99 }, { productId: 2, quantity: 2, unitPrice: 29.99 }] },
  { reservationId: 'demo-order-2', userId: 1, status: 'pending', items: [{ productId: 5, quantity: 10, unitPrice: 4.99 }] },
  { reservationId: 'demo-order-3', userId: 2, status: 'confirmed', items: [{ productId: 3, quantity: 2, unitPrice: 12.5 }] },
] as const;
